"""The plugin passes stitchkit's conformance suite (run: pytest plugins/stitchkit-procrustes/tests)."""

from stitchkit.testing import check_plugin

import stitchkit_procrustes.plugin


def test_plugin_conforms():
    assert "initializer:procrustes" in check_plugin(stitchkit_procrustes.plugin)

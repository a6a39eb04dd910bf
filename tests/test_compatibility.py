"""Rows that cannot be stitched are refused before anything trains, naming the failing boundary and why."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_row
from stitchkit.cli.build import build_command
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.errors import ConfigError
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape
from stitchkit.engine.runlog import read_run_records
from stitchkit.families.resnet import TimmResNet
from stitchkit.pool.metainit import meta_skeleton
from stitchkit.pool.pool import Pool, check_stitchable
from stitchkit_snnet import plugin


def vit(width: int, heads: int, depth: int = 2, **kw):
    with meta_skeleton():
        return tiny_row(RowShape(depth, width, heads), **kw)


def refused(method, rows) -> str:
    """check_stitchable and Pool.from_method refuse ``rows`` with the same message; returns it."""
    with pytest.raises(ConfigError) as err:
        check_stitchable(method, rows)
    with pytest.raises(ConfigError) as again, meta_skeleton():
        Pool.from_method(method, rows)
    assert str(err.value) == str(again.value) and "\n" not in str(err.value)
    return str(err.value)


def test_a_token_count_change_names_the_boundary():
    # 16x16 images: patch 4 gives 16 tokens + the class token, patch 8 gives 4 + 1
    msg = refused(SequentialMethod(), [vit(8, 2, patch=4), vit(16, 4, patch=8)])
    assert "joins tokens17@8 to tokens5@16, whose grids differ" in msg
    assert "after block 0 of row 0 (timm-vit 2x8:2), before block 1 of row 1 (timm-vit 2x16:4)" in msg


def test_tokens_into_a_cnn_are_refused():
    with meta_skeleton():
        cnn = TimmResNet.from_arch(dict(block="basic", layers=[1, 1, 1, 1], channels=[4, 8, 16, 32], stem_width=4,
                                        num_classes=5, img_size=16))
    msg = refused(SequentialMethod(), [vit(8, 2, depth=4), cnn])  # four blocks each
    assert "never tokens into a CNN" in msg and "after block 0 of row 0 (timm-vit 4x8:2)" in msg and "row 1 (timm-resnet" in msg


def test_different_input_sizes_or_channels_are_refused_even_with_equal_token_counts():
    # 16x16 with patch 4 and 8x8 with patch 2: both 16 tokens, so every boundary would fit; the inputs do not
    msg = refused(SequentialMethod(), [vit(8, 2, img=16, patch=4), vit(16, 4, img=8, patch=2)])
    assert msg.startswith("rows 0 and 1 take different inputs (channels, height, width): (3, 16, 16) and (3, 8, 8)")
    assert "image size differ" in msg
    msg = refused(SequentialMethod(), [vit(8, 2, chans=3), vit(16, 4, chans=1)])
    assert "(3, 16, 16) and (1, 16, 16)" in msg and "channels differ" in msg


def test_compatible_rows_pass():
    rows = [vit(8, 2), vit(16, 4)]
    check_stitchable(SequentialMethod(), rows)
    with meta_skeleton():
        assert len(Pool.from_method(SequentialMethod(), rows).paths) == 3


CONFIG = """
method = "snnet"
[data]
source = "digits"
img_size = 8
in_chans = 1
[train]
max_steps = 2
batch_size = 32
progress = false
device = "cpu"
[snnet]
init_images = 40
[[snnet.anchors]]
shape = "2x16:2"
patch_size = 4
train = true
[[snnet.anchors]]
shape = "2x32:4"
patch_size = 2
train = true
"""


def test_a_build_with_anchors_that_cannot_be_stitched_stops_before_training(tmp_path):
    registry = Registry(load_entrypoints=False)
    registry.register_plugin(plugin, name="snnet")
    toml = tmp_path / "snnet.toml"
    toml.write_text(CONFIG)
    with pytest.raises(ConfigError, match=r"joins tokens5@16 to tokens17@32, whose grids differ.*after block 0 of row 0 \(timm-vit 2x16:2\), before block 0 of row 1"):
        build_command(toml, out_dir=tmp_path / "run", registry=registry)
    assert not list((tmp_path / "run").glob("anchor*"))  # no anchor trained, no checkpoint written
    assert not [r for r in read_run_records(tmp_path / "run") if r.get("event") == "trained"]
    assert torch.get_default_device().type == "cpu"

"""One path for every family (issue 22 items 3, 4, 8): the model name -> adapter hook, stochastic depth kept
by ViT rows, and, per family, starting weights from a 1000-class checkpoint, the ``--timm --onnx`` export
rebuilt through the recorded adapter, and a teacher of the family's own with taps.

The networks are timm's own tiny test models (``test_vit``, ``test_resnet``, ``test_convnext``) and a Swin-T
shrunk by keyword (timm has no test Swin); every checkpoint is written by the test from random weights.
"""

from __future__ import annotations

import types

import pytest
import torch

import stitchkit
from stitchkit.core.errors import ConfigError, PluginError
from stitchkit.core.interfaces import AncestryAdapter
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(load_entrypoints=False)


# --------------------------------------------------------------------------- the model name -> adapter hook
@pytest.mark.parametrize(
    ("name", "adapter"),
    [
        ("deit_tiny_patch16_224", "timm-vit"), ("vit_base_patch16_224", "timm-vit"), ("deit3_small_patch16_224", "timm-vit"),
        ("swin_tiny_patch4_window7_224", "timm-swin"), ("resnet18", "timm-resnet"), ("seresnet50", "timm-resnet"),
        ("convnext_tiny", "timm-convnext"), ("test_convnext", "timm-convnext"), ("levit_192", "timm-levit"),
    ],
)
def test_the_core_adapters_answer_for_their_timm_models(registry, name, adapter):
    assert registry.ancestry_for(name) == adapter


def test_a_model_no_adapter_answers_for_is_one_line_naming_it(registry):
    for name in ("efficientnet_b0", "not_a_model"):  # a timm family without an adapter; a typo
        with pytest.raises(ConfigError, match=rf"^no ancestry adapter recognises the model '{name}' \(adapters: [^\n]*--adapter"):
            registry.ancestry_for(name)


class _Other(AncestryAdapter):
    """A second adapter that claims ViTs (only its name and the hook matter here)."""

    name = "other-vit"
    from_arch = arch = resized = stem = head = attention = part_of = None  # type: ignore[assignment]
    shape = input_size = blocks = None  # type: ignore[assignment]


def _plugin(answer):
    mod = types.ModuleType("claims")
    mod.register_ancestries = stitchkit.hookimpl(lambda register: register(_Other))  # type: ignore[attr-defined]
    mod.register_ancestries.__name__ = "register_ancestries"

    def ancestry_for_model(name):
        return answer(name)

    mod.ancestry_for_model = stitchkit.hookimpl(ancestry_for_model)  # type: ignore[attr-defined]
    return mod


def test_a_plugin_adapter_answers_the_hook_and_a_double_claim_names_both():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(_plugin(lambda n: "other-vit" if n.startswith(("my_vit", "deit_")) else None), name="claims")
    assert reg.ancestry_for("my_vit_small") == "other-vit"
    assert reg.ancestry_for("resnet18") == "timm-resnet"  # the core still answers for the rest
    with pytest.raises(ConfigError, match=r"several ancestry adapters claim the model 'deit_tiny_patch16_224': "
                                          r"other-vit \(plugin claims\); timm-vit \(plugin stitchkit\); name the adapter"):
        reg.ancestry_for("deit_tiny_patch16_224")


def test_a_plugin_answering_with_an_unregistered_adapter_is_a_plugin_error():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(_plugin(lambda n: "timm-vti"), name="typo")
    with pytest.raises(PluginError, match=r"plugin 'typo' answered ancestry_for_model\('resnet18'\) with 'timm-vti', which is no registered"):
        reg.ancestry_for("resnet18")


def test_plan_chooses_the_adapter_through_the_hook():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(_plugin(lambda n: None), name="silent")
    from stitchkit.apps.planner import plan

    rows = plan("sequential", ancestry="test_convnext", rows=[RowShape.staged([(1, 24, 0), (1, 32, 0), (1, 48, 0), (1, 64, 0)])],
                registry=reg, model_kwargs={"img_size": 32})["rows"]
    assert [r["adapter"] for r in rows] == ["timm-convnext"]


# --------------------------------------------------------------------------- item 8: stochastic depth in ViT rows
def test_vit_rows_keep_drop_path_rate_through_arch_and_resized(registry):
    cls = registry.ancestry("timm-vit")
    vit = cls.from_arch(dict(img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=4, num_heads=4, drop_path_rate=0.1))
    assert vit.arch()["drop_path_rate"] == 0.1
    row = cls.from_arch(vit.resized(RowShape(6, 16, 2)))
    probs = [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in row.model.blocks]  # timm: linear from 0 to the rate over the depth
    assert probs == pytest.approx([0.1 * i / 5 for i in range(6)]) and row.arch()["drop_path_rate"] == 0.1
    plain = cls.from_arch(dict(img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=4, num_heads=4))
    assert "drop_path_rate" not in plain.arch()  # no stochastic depth: the arch is as before

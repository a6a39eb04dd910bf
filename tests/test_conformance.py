"""The conformance suite (stitchkit.testing): every registered component passes it, one test each,
generated from the registry; deliberately broken components fail it with a precise message."""

from __future__ import annotations

import random
import types

import pytest
import torch
from torch import nn

import stitchkit
from stitchkit.core.errors import ConfigError
from stitchkit.components.initializers import RandomInitializer
from stitchkit.core.interfaces import (
    AuxiliaryDesign,
    DistillationLoss,
    InitContext,
    Method,
    PathSampler,
    StitchInitializer,
    TapRequest,
)
from stitchkit.core.registry import Registry
from stitchkit.components.samplers import UniformSampler
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.spec import Path, RowShape, Segment
from stitchkit.testing import check_component, check_plugin, conformance_cases
from stitchkit.families.vit import TimmViT

#: The installed registry (core + entry points), whatever the environment says about autoloading: built at
#: collection time, before fixtures, because the cases are parametrized from it.
INSTALLED = Registry(load_entrypoints=True)
SHIPPED = {
    "stitchkit": {"ancestry:timm-vit", "ancestry:timm-levit", "method:sequential", "initializer:random", "sampler:uniform",
                  "sampler:flops-grouped", "sampler:sandwich", "sampler:ros"},
    "learngene-pool": {"design:depth-reduced", "design:width-reduced", "design:pool", "loss:prediction",
                       "loss:block", "loss:attention", "loss:learngene", "initializer:tm", "initializer:tm-pinv",
                       "method:learngene-pool", "method:learngene-pool-sliding-window"},
    "snnet": {"method:snnet", "initializer:ls"},
    "snnetv2": {"method:snnetv2"},
    "procrustes": {"initializer:procrustes"},
}



@pytest.mark.parametrize("case", conformance_cases(INSTALLED), ids=str)
def test_registered_component_conforms(case):
    passed = check_component(case.kind, case.name, INSTALLED)
    assert {"registered", "name", "docstring"} <= set(passed)
    assert "bad input" in passed or (case.kind, case.name) in NO_BAD_INPUT


#: Components for which the contract defines no generic bad input: initializers that need no
#: images (any pool and context are valid) and losses that request no taps.
NO_BAD_INPUT = {("initializer", "random"), ("initializer", "tm"), ("initializer", "tm-pinv"), ("loss", "prediction")}


def test_cases_cover_every_shipped_component():
    cases = {str(c): c.plugin for c in conformance_cases(INSTALLED)}
    for plugin, names in SHIPPED.items():
        for name in names:
            assert cases.get(name) == plugin, (name, cases.get(name))


def test_suite_leaves_the_callers_random_streams_alone():
    torch.manual_seed(5)
    random.seed(5)
    want = (torch.rand(3), random.random())
    torch.manual_seed(5)
    random.seed(5)
    check_component("sampler", "uniform", Registry(load_entrypoints=False))
    assert torch.equal(torch.rand(3), want[0]) and random.random() == want[1]


# --------------------------------------------------------------------------- broken components
def plugin_of(*classes):
    """A throwaway plugin module registering each class with the hook of its kind."""
    from stitchkit.core.kinds import KINDS

    mod = types.ModuleType("broken_components")
    for base, hook in ((k.base, k.hook) for k in KINDS.values()):
        mine = [c for c in classes if issubclass(c, base)]
        if mine:
            def impl(register, mine=mine):
                for c in mine:
                    register(c)

            impl.__name__ = hook
            setattr(mod, hook, stitchkit.hookimpl(impl))
    return mod


def fails(kind, cls, check, match):
    """Register ``cls`` alone in a fresh registry; the suite must fail it at ``check`` saying ``match``."""
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(plugin_of(cls), name="broken")
    with pytest.raises(AssertionError, match=match) as info:
        check_component(kind, cls.name, reg)
    assert f"{kind} {cls.name!r} [{check}]" in str(info.value), str(info.value)
    return str(info.value)


class Zeros(StitchInitializer):
    """Zero weights and biases: a valid (if useless) initializer."""

    name = "zeros-test"

    def initialize(self, pool, context):
        with torch.no_grad():
            for layer in pool.stitches.values():
                layer.weight.zero_()
                layer.bias.zero_()


def test_a_valid_throwaway_plugin_passes():
    result = check_plugin(plugin_of(Zeros))
    assert list(result) == ["initializer:zeros-test"]
    assert "writes every stitch layer" in result["initializer:zeros-test"]


def test_no_docstring_fails():
    class NoDoc(Zeros):
        name = "no-doc"

    fails("initializer", NoDoc, "docstring", "no docstring of its own")


def test_inherited_name_fails():
    class Inherits(Zeros):
        """Zeros under the parent's name."""

    fails("initializer", Inherits, "name", "defines name = None.*inherits 'zeros-test'")


def test_nan_initializer_fails():
    class NaNs(StitchInitializer):
        """Divides by zero."""

        name = "nans"

        def initialize(self, pool, context):
            with torch.no_grad():
                for layer in pool.stitches.values():
                    layer.weight.copy_(torch.zeros_like(layer.weight) / 0.0)
                    layer.bias.zero_()

    fails("initializer", NaNs, "writes every stitch layer", "holds NaN or inf")


def test_initializer_skipping_a_layer_fails():
    class FirstOnly(Zeros):
        """Writes the first stitch layer only."""

        name = "first-only"

        def initialize(self, pool, context):
            first = sorted(pool.stitches)[0]
            with torch.no_grad():
                pool.stitches[first].weight.zero_()
                pool.stitches[first].bias.zero_()

    fails("initializer", FirstOnly, "writes every stitch layer", "'s0_1_2' holds NaN or inf")


def test_initializer_writing_a_wrong_shape_fails_with_the_shape():
    class Transposed(Zeros):
        """Replaces each weight's data by a finite tensor of the transposed shape."""

        name = "transposed-data"

        def initialize(self, pool, context):
            for layer in pool.stitches.values():
                layer.weight.data = torch.zeros(layer.in_features, layer.out_features)
                layer.bias.data.zero_()

    msg = fails("initializer", Transposed, "writes every stitch layer",
                r"weight of stitch layer 's0_1_1' has shape \(16, 32\), expected \(32, 16\)")
    assert "NaN" not in msg


def test_transposed_solve_is_named_not_a_broadcasting_error():
    from stitchkit.pool.features import check_images, fit_stitch_layers

    class TransposedSolve(StitchInitializer):
        """Least squares whose solver returns weight.T (a common slip)."""

        name = "transposed-solve"
        needs_images = True

        def initialize(self, pool, context):
            def solve(front, end, layer):
                x = front.reshape(-1, front.shape[-1]).double()
                y = end.reshape(-1, end.shape[-1]).double()
                return torch.linalg.lstsq(x, y).solution, torch.zeros(end.shape[-1])  # (in, out): transposed
            fit_stitch_layers(pool, check_images(context.images, self.name), solve)

    msg = fails("initializer", TransposedSolve, "writes every stitch layer",
                r"raised PluginError: weight of stitch layer 's0_1_1' from solve has shape \(16, 32\), expected "
                r"\(32, 16\) \(at StitchPlace\(front=0, front_block=1, end=1, end_block=1\); transposed\? "
                r"nn.Linear's weight is \(out, in\)\)")
    assert "RuntimeError" not in msg and "broadcast" not in msg


def test_initializer_on_the_global_rng_fails():
    class GlobalRandom(StitchInitializer):
        """Ignores context.seed."""

        name = "global-random"

        def initialize(self, pool, context):
            for layer in pool.stitches.values():
                layer.reset_parameters()

    fails("initializer", GlobalRandom, "deterministic", "draw randomness only from context.seed")


def test_initializer_replacing_parameters_fails():
    class Replaces(StitchInitializer):
        """Assigns new Parameter objects (an optimizer holding the old ones would train stale tensors)."""

        name = "replaces"

        def initialize(self, pool, context):
            for layer in pool.stitches.values():
                layer.weight = nn.Parameter(torch.zeros_like(layer.weight))
                layer.bias = nn.Parameter(torch.zeros_like(layer.bias))

    fails("initializer", Replaces, "writes every stitch layer", "was replaced; write the existing parameters in place")


def test_initializer_dropping_float64_fails():
    class Float32(StitchInitializer):
        """Always writes float32 data."""

        name = "float32-only"

        def initialize(self, pool, context):
            for layer in pool.stitches.values():
                layer.weight.data = torch.zeros(layer.weight.shape, dtype=torch.float32)
                layer.bias.data = torch.zeros(layer.bias.shape, dtype=torch.float32)

    fails("initializer", Float32, "float64", "became torch.float32 on a torch.float64 pool")


def test_initializer_changing_rows_or_mode_fails():
    class Evals(Zeros):
        """Puts the rows in eval mode and leaves them there."""

        name = "leaves-eval"

        def initialize(self, pool, context):
            pool.rows.eval()
            super().initialize(pool, context)

    fails("initializer", Evals, "writes every stitch layer", "left the rows in eval mode")


def test_image_initializer_with_a_plain_error_fails():
    class NeedsImages(Zeros):
        """Needs images but checks them with a bare ValueError."""

        name = "needs-images"
        needs_images = True

        def initialize(self, pool, context):
            if context.images is None:
                raise ValueError("no images")
            super().initialize(pool, context)

    msg = fails("initializer", NeedsImages, "bad input", "raised ValueError: no images; raise a stitchkit.core.errors.StitchkitError")
    assert "initialize without images" in msg


def test_nondeterministic_sampler_fails():
    class PythonRandom(PathSampler):
        """Draws from python's global random module instead of the generator."""

        name = "python-random"

        def sample(self, generator):
            return [random.choice(self.paths)]

    fails("sampler", PythonRandom, "deterministic", "draw randomness only from the generator")


def test_sampler_inventing_paths_fails():
    class Invents(UniformSampler):
        """Returns a path that is not in its list."""

        name = "invents"

        def sample(self, generator):
            return [Path((Segment(0, 0, 1),))]

    fails("sampler", Invents, "returns given paths", r"r0\[0:1\].*not one of the given paths")


def test_sampler_accepting_no_paths_fails():
    class Lenient(PathSampler):
        """Accepts an empty path list (and fails only when sampling)."""

        name = "lenient"

        def __init__(self, paths, macs=None):
            self.paths, self.macs = list(paths), macs

        def sample(self, generator):
            return [self.paths[int(torch.randint(len(self.paths), (1,), generator=generator))]]

    fails("sampler", Lenient, "bad input", r"a sampler over no paths raised nothing")


def test_loss_not_a_scalar_fails():
    class PerSample(DistillationLoss):
        """Per-sample losses instead of their mean."""

        name = "per-sample"

        def teacher_taps(self):
            return TapRequest()

        def student_taps(self):
            return TapRequest()

        def forward(self, student, teacher):
            return (student.logits - teacher.logits).pow(2).mean(-1)

    fails("loss", PerSample, "scalar", r"not a 0-dim tensor")


def test_loss_with_an_unused_parameter_fails():
    class Unused(DistillationLoss):
        """Owns a matrix that never enters the loss."""

        name = "unused-parameter"

        def __init__(self):
            super().__init__()
            self.matrix = nn.Parameter(torch.eye(3))

        def teacher_taps(self):
            return TapRequest()

        def student_taps(self):
            return TapRequest()

        def forward(self, student, teacher):
            return (student.logits - teacher.logits).pow(2).mean()

    fails("loss", Unused, "gradients", r"parameters \['matrix'\] get no \(finite\) gradient")


def test_loss_asking_for_a_block_the_student_lacks_fails():
    class TooDeep(DistillationLoss):
        """Asks for block 7 of a two-block student."""

        name = "too-deep"

        def teacher_taps(self):
            return TapRequest(blocks=(0,))

        def student_taps(self):
            return TapRequest(blocks=(7,))

        def forward(self, student, teacher):
            return student.logits.sum()

    fails("loss", TooDeep, "taps", r"student_taps\(\) asks for blocks \[7\] of a 2-block student")


def test_loss_needing_constructor_arguments_without_example_fails():
    class NeedsWidth(DistillationLoss):
        """Needs the widths but does not override example()."""

        name = "needs-width"

        def __init__(self, width):
            super().__init__()

        def teacher_taps(self):
            return TapRequest()

        def student_taps(self):
            return TapRequest()

        def forward(self, student, teacher):
            return student.logits.sum()

    fails("loss", NeedsWidth, "example", r"missing 1 required positional argument: 'width'")


def test_method_with_an_invalid_path_fails():
    class Skips(SequentialMethod):
        """Adds a path that starts in the middle of a row."""

        name = "skips"

        def paths(self, rows, stitches):
            return super().paths(rows, stitches) + [Path((Segment(1, 1, rows[1].depth),))]

    fails("method", Skips, "paths validate", r"path r1\[1:3\] does not validate: .*first segment must start at block 0")


def test_method_with_an_unregistered_default_fails():
    class Typo(SequentialMethod):
        """Names an initializer that does not exist."""

        name = "typo-default"
        default_initializer = "radnom"

    fails("method", Typo, "defaults registered", r"default_initializer 'radnom'.*did you mean 'random'")


def test_method_accepting_no_rows_fails():
    class Silent(Method):
        """No stitch layers, one path per row; accepts an empty row list."""

        name = "silent"

        def stitches(self, rows):
            return []

        def paths(self, rows, stitches):
            return [Path((Segment(r, 0, s.depth),)) for r, s in enumerate(rows)]

    fails("method", Silent, "bad input", r"stitches\(\[\]\) \(no rows\) raised nothing")


def test_design_rows_not_narrow_first_fails():
    class WideFirst(AuxiliaryDesign):
        """The ancestry's shape, then a narrow row."""

        name = "wide-first"

        def rows(self, ancestry):
            if ancestry.width < 2:
                raise ConfigError("too small")
            return [ancestry, RowShape(ancestry.depth, ancestry.width // 2, 1)]

    fails("design", WideFirst, "rows", r"not sorted narrow first: \['4x32:4', '4x16:1'\]")


def test_design_initialize_touching_the_ancestry_fails():
    class Steals(AuxiliaryDesign):
        """Zeros the ancestry's classifier while initialising a row."""

        name = "steals"

        def rows(self, ancestry):
            return [RowShape(1, ancestry.width, ancestry.heads)] if ancestry.depth > 1 else []

        def initialize(self, row, ancestry):
            with torch.no_grad():
                ancestry.model.head.weight.zero_()

    fails("design", Steals, "initialize", "initialize modified the ancestry")


class TinyViT(TimmViT):
    """timm ViT with a tiny example."""

    name = "tiny-vit-test"


def test_adapter_whose_stem_copies_parameters_fails():
    import copy

    class CopyingStem(TinyViT):
        """Its stem holds copies of the network's parameters (a descendant would not train the row)."""

        name = "copying-stem"

        def stem(self):
            return copy.deepcopy(super().stem())

    fails("ancestry", CopyingStem, "stem and head share parameters", "stem\\(\\) holds a copy of ")


def test_adapter_with_a_bad_part_of_fails():
    class OffByOne(TinyViT):
        """Numbers blocks from 1."""

        name = "off-by-one"

        def part_of(self, key):
            part, index = super().part_of(key)
            return (part, index + 1) if part == "block" else (part, index)

    fails("ancestry", OffByOne, "part_of", r"part_of\('blocks.2..*\) = \('block', 3\)")


def test_adapter_declaring_wrong_signatures_fails():
    class ShortCounted(TinyViT):
        """Forgets the class token when it declares its token count."""

        name = "short-counted"

        def signatures(self):
            sigs = super().signatures()
            return [type(s)(s.layout, s.channels, (s.size[0] - 1,)) for s in sigs]

    fails("ancestry", ShortCounted, "stem -> blocks -> head", r"declares tokens16@32 at boundary 0 but the network gives tokens17@32")


def test_adapter_without_example_fails():
    class NoExample(stitchkit.AncestryAdapter):
        """Declares nothing beyond the abstract contract."""

        name = "no-example"

    fails("ancestry", NoExample, "example", r"PluginError|has no example\(\): override the classmethod")


def test_a_timm_adapter_subclass_passes():
    passed = check_plugin(plugin_of(TinyViT))["ancestry:tiny-vit-test"]
    assert {"arch round trip", "part_of", "taps", "resized", "float64", "bad input"} <= set(passed)


def test_check_plugin_without_components_fails():
    with pytest.raises(AssertionError, match="registered no component"):
        check_plugin(types.ModuleType("empty_plugin"))


def test_missing_tap_is_a_stitchkit_error():
    from stitchkit.core.errors import MissingTapError, StitchkitError
    from stitchkit.core.interfaces import Taps

    taps = Taps(logits=torch.zeros(1), blocks={1: torch.zeros(1)})
    with pytest.raises(MissingTapError, match=r"block output 3 was not tapped \(tapped: \[1\]\)") as info:
        taps.blocks[3]
    assert isinstance(info.value, StitchkitError) and isinstance(info.value, KeyError)
    with pytest.raises(MissingTapError, match="stem output was not tapped"):
        taps.block_input(0)
    assert torch.equal(taps.block_input(2), torch.zeros(1))


def test_tm_example_adds_what_distillation_leaves():
    init_cls = INSTALLED.get("initializer", "tm")
    from stitchkit.pool.pool import Pool

    torch.manual_seed(0)
    rows = [TimmViT.from_arch(dict(img_size=8, patch_size=4, num_classes=3, embed_dim=w, depth=2, num_heads=2)) for w in (8, 16)]
    pool = Pool.from_method(SequentialMethod(), rows)
    init_cls.example(pool=pool).initialize(pool, InitContext())
    w = pool.extras["learngene.row0.W.0"], pool.extras["learngene.row0.W.1"]
    assert w[0].shape == (16, 8) and pool.info["learngene"]["ancestry"]["width"] == 16
    # tm: stitch weight = the averaged W transposed back into nn.Linear layout (A_b = I for the widest row)
    for layer in pool.stitches.values():  # tm: every stitch weight is row 0's W averaged over levels
        torch.testing.assert_close(layer.weight.detach(), (w[0] + w[1]) / 2)
        assert not layer.bias.any()


# --------------------------------------------------------------------------- every family's context
def test_every_family_is_a_context_with_its_own_stitch_layers():
    """The suite's families cover the three feature layouts, so stitch layers are nn.Linear (tokens, NHWC)
    and 1x1 nn.Conv2d (maps); each family's rows are what its line says."""
    from stitchkit.pool.pool import Pool
    from stitchkit.testing import FAMILIES

    reg = Registry(load_entrypoints=False)
    seen = {}
    for family in FAMILIES:
        rows = [family.network(reg, text, seed=0) for text in family.rows]
        assert [str(r.shape) for r in rows] == list(family.rows)
        pool = Pool.from_method(SequentialMethod(), rows)
        kinds = {"1x1 conv" if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) else
                 "linear" if isinstance(m, nn.Linear) else type(m).__name__ for m in pool.stitches.values()}
        seen[family.adapter] = (rows[0].feature_layout, kinds)
    assert seen == {"timm-vit": ("tokens", {"linear"}), "timm-swin": ("nhwc", {"linear"}),
                    "timm-resnet": ("map", {"1x1 conv"}), "timm-convnext": ("map", {"1x1 conv"}),
                    "timm-levit": ("tokens", {"linear"})}
    missing = set(reg.list("ancestry")) - set(seen)
    assert not missing, f"core families {sorted(missing)} are no context yet: add a Family line to stitchkit.testing.FAMILIES"


class EyeInit(StitchInitializer):
    """Copies an identity into each weight, as if every stitch layer were an nn.Linear."""

    name = "eye-linear-only"

    def initialize(self, pool, context):
        with torch.no_grad():
            for layer in pool.stitches.values():
                layer.weight.copy_(torch.eye(layer.weight.shape[0], layer.weight.shape[1]))
                layer.bias.zero_()


def test_initializer_that_breaks_on_1x1_convolutions_fails_on_a_cnn_family():
    msg = fails("initializer", EyeInit, "writes every stitch layer", "on timm-resnet \\(map features\\): raised RuntimeError")
    assert "timm-vit" not in msg and "timm-swin" not in msg  # Linear layers (tokens, NHWC) pass


def test_initializer_that_assumes_tokens_fails_on_channels_last_features():
    from stitchkit.pool.features import check_images, fit_stitch_layers

    class TokensOnly(StitchInitializer):
        """Least squares that takes features as (B, N, C) tokens: C is read from dimension 2."""

        name = "tokens-only"
        needs_images = True

        def initialize(self, pool, context):
            def solve(front, end, layer):
                x = front.reshape(-1, front.shape[2]).double()  # (B, H, W, C) grids: shape[2] is W
                y = end.reshape(-1, end.shape[2]).double()
                a = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
                theta = torch.linalg.lstsq(a, y).solution
                return theta[:-1].T, theta[-1]
            fit_stitch_layers(pool, check_images(context.images, self.name), solve)

    fails("initializer", TokensOnly, "writes every stitch layer",
          r"on timm-swin \(nhwc features\): raised RuntimeError: torch.linalg.lstsq")


def _swin():
    from stitchkit.families.swin import TimmSwin

    return TimmSwin


def test_adapter_without_attention_macs_fails():
    class NoAttentionMacs(TinyViT):
        """Declares no attention matmuls."""

        name = "no-attention-macs"

        def uncounted_macs(self):
            return {}

    # by hand (tests/helpers.py): the 3-block width-32 example on 16 tokens + class token, 5 classes
    from helpers import block_macs, stem_macs

    n, d = 17, 32
    true = stem_macs(d, 16, 4, 3) + 3 * block_macs(d, n) + d * 5
    attention = 3 * 2 * n * n * d  # q @ k^T and attn @ v of each block
    fails("ancestry", NoAttentionMacs, "attention MACs",
          rf"count_macs gives {true - attention:,} MACs per image, FlopCounterMode {2 * true:,} FLOPs = {true:,} MACs: "
          rf"{attention:,} MACs are not counted; declare the operations Linear/Conv2d hooks cannot see")


def test_adapter_forgetting_restore_buffers_fails_the_round_trip():
    base = _swin()

    class NoRestore(base):
        """Swin whose relative position indices are not recomputed after a lazy load."""

        name = "no-restore"

        def restore_buffers(self, module):
            pass

    fails("ancestry", NoRestore, "save/load round trip",
          r"load_pool of a saved one-row pool raised StitchkitError: .*relative_position_index.*restore_buffers")


def test_adapter_tapping_the_wrong_module_fails():
    class TapsMlp(TinyViT):
        """Returns the MLP as the attention sublayer."""

        name = "taps-mlp"

        def attention(self, index):
            return self.blocks[index].mlp

    fails("ancestry", TapsMlp, "attention taps", r"attention\(0\) is a Mlp without block 0's attention matmuls \(the Attention")

    class TapsNext(TinyViT):
        """Off by one: block i's tap is block i+1's attention."""

        name = "taps-next"

        def attention(self, index):
            return self.blocks[(index + 1) % len(self.blocks)].attn

    fails("ancestry", TapsNext, "attention taps", r"attention\(0\) is a Attention that is not part of block 0")


def test_adapter_reporting_a_wrong_stage_layout_fails():
    base = _swin()

    class Swapped(base):
        """Reports its stage depths in the wrong order (2 + 1 instead of 1 + 2)."""

        name = "swapped-stages"

        @property
        def shape(self):
            stages = super().shape.stage_shapes
            return RowShape.staged([(stages[1][0], stages[0][1], stages[0][2]), (stages[0][0], stages[1][1], stages[1][2])])

    fails("ancestry", Swapped, "stage layout", r"shape says stage 0 is 2x16 \(blocks 0..1\), but block\(s\) \[1\] output \[32\] channels")


def test_a_component_may_decline_a_family_with_a_clear_error_but_not_the_first():
    passed = check_component("design", "depth-reduced", INSTALLED)
    assert {"refuses timm-swin", "refuses timm-resnet", "refuses timm-convnext"} <= set(passed)

    class ViTOnly(Zeros):
        """Refuses every pool (even a ViT one) in example()."""

        name = "refuses-all"

        @classmethod
        def example(cls, *args, **context):
            raise ConfigError("no pool is good enough")

    fails("initializer", ViTOnly, "example", r"on timm-vit \(tokens features\): raised ConfigError: no pool is good enough")


def test_every_method_runs_on_every_family_it_does_not_decline():
    """snnetv2 on Swin rows: stitch widths are the widths where each layer stands (a stage's), not the rows' last."""
    passed = check_component("method", "snnetv2", INSTALLED)
    assert not [p for p in passed if p.startswith("refuses")] and "descendants build" in passed

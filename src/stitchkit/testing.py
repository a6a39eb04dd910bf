"""The conformance suite: the checks every stitchkit component must pass, for plugin authors.

Run it against your component by name, or against a whole plugin::

    from stitchkit.testing import check_component, check_plugin
    check_component("initializer", "procrustes")     # in the default registry (installed plugins)
    check_plugin(my_package.plugin)                  # every component the plugin registers

or generate one pytest test per registered component::

    @pytest.mark.parametrize("case", conformance_cases(), ids=str)
    def test_conformance(case):
        check_component(case.kind, case.name)

A failed check raises ``AssertionError("<kind> '<name>' [<check>]: <what is wrong>")``;
a passing run returns the names of the checks it made. Every kind is checked
for: being registered under its own ``name`` (defined on the class, not
inherited), a docstring of its own, an ``example()`` that builds it, float32
and float64, determinism under a seed (independent of the global RNGs where
the contract gives a generator or seed), and the documented
:class:`~stitchkit.core.errors.StitchkitError` on bad input. Each kind's specific
checks are listed in the docstring of its ``_check_<kind>`` function.

Components are built through their ``example(**context)`` classmethod, once
per family of :data:`FAMILIES` (ViT, Swin, ResNet, ConvNeXt, LeViT: ``tokens``,
``nhwc`` and ``map`` features, so stitch layers are ``nn.Linear`` and 1x1 ``nn.Conv2d``),
each network the family adapter's ``example()`` resized to the shapes below:

=============  ===============================================================
kind           context passed to ``example``
=============  ===============================================================
ancestry       none
design         ``ancestry``: the family's :attr:`Family.teacher` shape
loss           ``teacher`` and ``student`` shapes, ``layout``: the family's feature layout
initializer    ``pool``: a ``sequential`` pool of the family's two :attr:`Family.rows`
sampler        ``paths`` and ``macs`` of that pool (positional)
method         none; its pool is built from the family's rows
=============  ===============================================================

A check that fails in one family says which (``... [check] on timm-resnet
(map features): ...``). Adding a family to every context is one line of
:data:`FAMILIES`. A loss that asks for attention taps is not run on a family
without attention (its shapes have no heads).

The suite uses its own RNG state (``torch.random.fork_rng``): running it does
not change the caller's random streams.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .core.errors import StitchkitError
from .core.interfaces import AncestryAdapter, DistillationLoss, InitContext, PathSampler, TapRequest, Taps
from .core.registry import KINDS, Registry, default_registry
from .core.spec import FeatureSignature, Path, RowShape, StitchSpec, parse_row

__all__ = [
    "ANCESTRY", "FAMILIES", "ROWS", "STUDENT", "TEACHER", "ConformanceCase", "Family", "check_component",
    "check_plugin", "conformance_cases",
]


@dataclass(frozen=True)
class Family:
    """A family the contexts are built in: the registered adapter and the shapes (``RowShape`` text) of the
    networks handed to components, each built as ``from_arch(example().resized(shape))``."""

    adapter: str
    #: The two rows (narrow, wide; equal depths) of the pools initializers, samplers and methods get.
    rows: tuple[str, str]
    #: The ancestry of designs and the teacher of losses.
    teacher: str
    #: The student of losses.
    student: str

    def shape(self, text: str) -> RowShape:
        return parse_row(text)

    def network(self, registry: Registry, text: str, seed: int) -> AncestryAdapter:
        """A randomly initialised network of this family and shape, in eval mode. Parameters a family
        initialises to zero (LeViT's residual-branch norms, which silence every attention output at
        initialisation) get small random values, so that every tap carries a signal and a gradient."""
        cls = registry.get("ancestry", self.adapter)
        torch.manual_seed(seed)
        adapter = cls.from_arch(cls.example().resized(self.shape(text)))  # type: ignore[attr-defined]
        with torch.no_grad():
            for p in adapter.model.parameters():
                if p.is_floating_point() and not p.any():
                    p.normal_(0.0, 0.1)
        adapter.model.eval()
        return adapter  # type: ignore[no-any-return]


#: Every component is checked in each of these families (one line per family).
FAMILIES: tuple[Family, ...] = (
    Family("timm-vit", rows=("3x16:2", "3x32:4"), teacher="4x32:4", student="2x16:2"),
    Family("timm-swin", rows=("1x8:1/2x16:2", "1x16:2/2x32:4"), teacher="1x16:2/2x32:4", student="1x8:1/1x16:2"),
    Family("timm-resnet", rows=("1x4/1x8/1x8/1x16", "1x8/1x16/1x16/1x32"), teacher="1x4/2x8/1x8/1x16",
           student="1x2/1x4/1x4/1x8"),
    Family("timm-convnext", rows=("1x4/1x4/1x8/1x8", "1x8/1x8/1x16/1x16"), teacher="1x8/2x8/1x16/1x16",
           student="1x4/1x4/1x8/1x8"),
    # tokens whose count shrinks between stages, heads independent of the width (24 wide, 5 heads)
    Family("timm-levit", rows=("1x8:1/2x12:3", "1x16:2/2x24:5"), teacher="1x16:2/3x24:5", student="1x8:1/1x12:3"),
)

#: The ViT family's shapes (kept for plugins that refer to them): the ancestry handed to designs,
#: the teacher and student of losses, the rows of the pools.
ANCESTRY = RowShape(4, 32, 4)
TEACHER, STUDENT = RowShape(4, 32, 4), RowShape(2, 16, 2)
ROWS = (RowShape(3, 16, 2), RowShape(3, 32, 4))
BATCH = 4


# --------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class ConformanceCase:
    """One registered component to check; ``str(case)`` is ``kind:name`` (a readable pytest id)."""

    kind: str
    name: str
    plugin: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def conformance_cases(registry: Registry | None = None) -> list[ConformanceCase]:
    """Every registered component of every kind (default: the process-wide registry with installed plugins)."""
    registry = registry or default_registry()
    return [ConformanceCase(e.kind, e.name, e.plugin) for e in registry.entries()]


def check_component(kind: str, name: str, registry: Registry | None = None) -> list[str]:
    """Run every check of ``kind`` on the component registered as ``name``; return the checks made.

    Raises ``AssertionError`` naming the component, the check and the problem.
    """
    registry = registry or default_registry()
    if kind not in KINDS:
        raise AssertionError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    checker = _Checker(kind, name)
    with checker.check("registered"):
        try:
            cls = registry.get(kind, name)
        except StitchkitError as exc:
            raise AssertionError(str(exc)) from None
    checker.cls = cls
    with _quiet_rng():
        _check_common(checker, registry)
        _checker_of(kind)(checker, registry)
    return checker.passed


def check_plugin(plugin: object, *, name: str | None = None, registry: Registry | None = None) -> dict[str, list[str]]:
    """Register ``plugin`` (a module or object with ``stitchkit.hookimpl`` functions) and check every
    component it registers; return ``{"kind:name": [checks]}``.

    ``registry`` defaults to a fresh one holding only the core's components;
    pass one that holds other plugins when a component depends on them (e.g.
    a method whose default initializer another plugin provides).
    """
    registry = registry or Registry(load_entrypoints=False)
    if registry.pm.is_registered(plugin):
        name = registry.pm.get_name(plugin)
    else:
        name = registry.register_plugin(plugin, name=name)
    entries = [e for e in registry.entries() if e.plugin == name]
    if not entries:
        raise AssertionError(f"plugin {name!r} registered no component; does it implement a register_* hook?")
    return {f"{e.kind}:{e.name}": check_component(e.kind, e.name, registry) for e in entries}


# --------------------------------------------------------------------------- machinery
class _Checker:
    """Runs named checks on one component and turns their failures into precise assertions."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        self.cls: Any = type(None)  # the component class under test, whatever its kind
        self.passed: list[str] = []
        self.where = ""  # the family whose context a check runs in, for the message
        self.family: Family | None = None
        #: family adapter -> the StitchkitError message with which the component declined that family
        self.refused: dict[str, str] = {}

    @contextlib.contextmanager
    def in_family(self, family: Family, layout: str) -> Iterator[None]:
        """Run the checks inside in ``family``'s context; a failure names the family and its feature layout.

        In every family but the first (ViT), a component may decline the context where it is handed it
        (``example``, ``rows``, ``stitches``/``paths``) with a StitchkitError, a clear message for its
        users (a design of one-stage rows given a Swin): recorded as ``refuses <family>``, not a failure.
        """
        self.where, self.family = f" on {family.adapter} ({layout} features)", family
        try:
            yield
        except _Refused:
            pass
        finally:
            self.where, self.family = "", None

    @contextlib.contextmanager
    def check(self, what: str) -> Iterator[None]:
        head = f"{self.kind} {self.name!r} [{what}]{self.where}"
        try:
            yield
        except StitchkitError as exc:
            if self.family is not None and self.family is not FAMILIES[0] and what in _DECLINABLE:
                self.refused[self.family.adapter] = f"{type(exc).__name__}: {exc}"
                self.passed.append(f"refuses {self.family.adapter}")
                raise _Refused() from None
            raise AssertionError(f"{head}: raised {type(exc).__name__}: {exc}") from exc
        except _CheckFailed as exc:
            raise AssertionError(f"{head}: {exc}") from None
        except AssertionError as exc:
            raise AssertionError(f"{head}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any crash is a failed check, reported as such
            raise AssertionError(f"{head}: raised {type(exc).__name__}: {exc}") from exc
        if what not in self.passed:
            self.passed.append(what)

    def example(self, *args: Any, **context: Any) -> Any:
        obj = self.cls.example(*args, **context)  # type: ignore[attr-defined]
        if not isinstance(obj, self.cls):
            raise _CheckFailed(f"{self.cls.__name__}.example() returned {type(obj).__name__}, not an instance of it")
        return obj


class _CheckFailed(Exception):
    pass


class _Refused(Exception):
    """A component declined a family's context with a StitchkitError (see :meth:`_Checker.in_family`)."""


#: The checks where a component is handed a family's context and may decline it.
_DECLINABLE = frozenset({"example", "rows", "stitches", "paths validate"})


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise _CheckFailed(problem)


def _raises_stitchkit_error(call: Callable[[], Any], what: str) -> None:
    """``call()`` must raise a StitchkitError (the documented errors); anything else fails the check."""
    try:
        call()
    except StitchkitError:
        return
    except Exception as exc:  # noqa: BLE001
        raise _CheckFailed(
            f"{what} raised {type(exc).__name__}: {exc}; raise a stitchkit.core.errors.StitchkitError subclass "
            f"(e.g. ConfigError) with a message saying what to do"
        ) from None
    raise _CheckFailed(f"{what} raised nothing; it must raise a stitchkit.core.errors.StitchkitError subclass")


@contextlib.contextmanager
def _quiet_rng() -> Iterator[None]:
    """Leave the caller's torch, python and numpy random states as they were."""
    py_state = random.getstate()
    np_state = _numpy_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            if np_state is not None:
                import numpy as np

                np.random.set_state(np_state)


def _numpy_state() -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return None
    return np.random.get_state()


def _reseed_globals(seed: int) -> None:
    """Set every global RNG to ``seed``: runs under different global seeds must agree when the
    contract gives the component its own generator or seed."""
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _seeded(seed: int, make: Callable[[], Any]) -> Any:
    torch.manual_seed(seed)
    return make()


def _images(n: int = BATCH, size: tuple[int, ...] = (3, 16, 16), seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *size, generator=torch.Generator().manual_seed(seed))


def _rows(family: Family, registry: Registry) -> list[AncestryAdapter]:
    return [family.network(registry, text, seed=10 + i) for i, text in enumerate(family.rows)]


def _families(registry: Registry) -> Iterator[tuple[Family, str]]:
    """Each family of :data:`FAMILIES` with its feature layout."""
    for family in FAMILIES:
        yield family, registry.get("ancestry", family.adapter).feature_layout  # type: ignore[attr-defined]


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str | None:
    """``None`` when equal bit for bit, else the first differing key."""
    if a.keys() != b.keys():
        return f"keys differ: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]):
            return k
    return None


def _layer_words(layer: nn.Module) -> str:
    return "1x1 nn.Conv2d" if isinstance(layer, nn.Conv2d) else f"nn.{type(layer).__name__}"


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _pool(family: Family, registry: Registry, dtype: torch.dtype = torch.float32) -> Any:
    """A ``sequential`` pool of the family's two rows (stitch layers at every block boundary)."""
    from .components.sequential import SequentialMethod
    from .pool.pool import Pool

    return Pool.from_method(SequentialMethod(), _rows(family, registry)).to(dtype)


# --------------------------------------------------------------------------- common checks
def _check_common(c: _Checker, registry: Registry) -> None:
    base = KINDS[c.kind].base
    with c.check("subclass"):
        _require(issubclass(c.cls, base), f"{c.cls.__name__} is not a subclass of stitchkit.core.interfaces.{base.__name__}")
    with c.check("name"):
        own = c.cls.__dict__.get("name")
        _require(
            own == c.name,
            f"{c.cls.__qualname__} is registered as {c.name!r} but defines name = {own!r} on the class itself"
            + ("" if own is not None else f" (it inherits {getattr(c.cls, 'name', None)!r}); give it a name of its own"),
        )
    with c.check("docstring"):
        doc = c.cls.__dict__.get("__doc__")
        _require(
            isinstance(doc, str) and bool(doc.strip()),
            f"{c.cls.__qualname__} has no docstring of its own; 'stitchkit plugins' shows its first line to users",
        )


# --------------------------------------------------------------------------- ancestry
def _check_ancestry(c: _Checker, registry: Registry) -> None:
    """``example()`` builds the family reproducibly; ``arch()`` is JSON and ``from_arch(arch())``
    rebuilds the same network (also on the meta device); ``part_of`` maps every state-dict key to
    the stem, a block in range or the head; ``stem()`` / ``head()`` share the network's parameters
    under the network's keys; ``input_size`` is ``(C, H, W)`` and ``signatures()`` has one entry
    per block boundary, ending each stage at the stage's width; stem -> blocks -> head computes the
    model's output; ``forward_taps`` gives every block tap in the shape its signature declares (and
    every attention tap where the family has heads) and leaves no hooks behind; ``resized`` gives
    the asked shape (one more block and twice the width per stage); float64 works; an unknown arch
    key raises a StitchkitError."""
    with c.check("example"):
        a = _seeded(0, c.example)
        a.model.eval()
        shape = a.shape
        _require(isinstance(shape, RowShape), f"shape is {shape!r}, not a RowShape")
        _require(len(a.blocks) == shape.depth, f"{len(a.blocks)} blocks but shape.depth = {shape.depth}")
    with c.check("deterministic"):
        diff = _same_state(_state(a.model), _state(_seeded(0, c.example).model))
        _require(diff is None, f"example() under torch.manual_seed(0) twice gives different weights ({diff})")
    arch = a.arch()
    with c.check("arch round trip"):
        _require(json.loads(json.dumps(arch)) == arch, "arch() is not plain JSON (a dict of str, numbers, lists)")
        b = _seeded(0, lambda: c.cls.from_arch(arch))
        _require(type(b) is c.cls, f"from_arch returned {type(b).__name__}, not {c.cls.__name__}")
        _require(b.arch() == arch, f"from_arch(arch()).arch() differs: {b.arch()} != {arch}")
        sa, sb = a.model.state_dict(), b.model.state_dict()
        _require(
            {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()},
            "from_arch(arch()) has other state-dict keys or shapes than the network",
        )
        with torch.device("meta"):
            m = c.cls.from_arch(arch)
        _require(all(p.device.type == "meta" for p in m.model.parameters()),
                 "from_arch under torch.device('meta') allocated real tensors (the planner builds on meta)")
    with c.check("part_of"):
        keys = list(a.model.state_dict())
        seen_blocks: dict[int, int] = {}
        for k in keys:
            part = a.part_of(k)
            ok = part in (("stem", None), ("head", None)) or (
                isinstance(part, tuple) and len(part) == 2 and part[0] == "block"
                and isinstance(part[1], int) and 0 <= part[1] < shape.depth
            )
            _require(ok, f"part_of({k!r}) = {part!r}; expected ('stem', None), ('head', None) or ('block', i) with 0 <= i < {shape.depth}")
            if part[0] == "block":
                seen_blocks[part[1]] = seen_blocks.get(part[1], 0) + 1
        for i, blk in enumerate(a.blocks):
            _require(seen_blocks.get(i, 0) == len(blk.state_dict()),
                     f"part_of assigns {seen_blocks.get(i, 0)} keys to block {i}, which has {len(blk.state_dict())}")
    with c.check("stem and head share parameters"):
        full = a.model.state_dict(keep_vars=True)
        for part, module in (("stem", a.stem()), ("head", a.head())):
            own = module.state_dict(keep_vars=True)
            want = {k for k in full if a.part_of(k)[0] == part}
            _require(set(own) == want, f"{part}() state-dict keys {sorted(set(own) ^ want)[:5]} differ from the network's {part} keys")
            for k, v in own.items():
                _require(v is full[k], f"{part}() holds a copy of {k!r} instead of the network's own tensor")
    with c.check("input size and signatures"):
        size = tuple(a.input_size)
        _require(len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size), f"input_size is {size!r}, not (C, H, W)")
        sigs = a.signatures()
        _require(len(sigs) == shape.depth + 1, f"signatures() gives {len(sigs)} entries for {shape.depth} blocks (needs depth + 1)")
        _require(all(isinstance(s, FeatureSignature) for s in sigs), "signatures() must return FeatureSignature objects")
        _require(sigs[-1].channels == shape.width, f"the last block outputs {sigs[-1].channels} channels but shape.width = {shape.width}")
    with c.check("stage layout"):
        real = [s.channels for s in sigs[1:]]  # block i's output channels
        for i, (d, w, _h) in enumerate(shape.stage_shapes):
            start = shape.stage_starts[i]
            wrong = [start + b for b in range(d) if real[start + b] != w]
            _require(not wrong, f"shape says stage {i} is {d}x{w} (blocks {start}..{start + d - 1}), but block(s) {wrong} output "
                                f"{[real[b] for b in wrong]} channels ({[str(sigs[b + 1]) for b in wrong]}); the stages "
                                f"of shape {shape} disagree with the blocks' signatures {[str(s) for s in sigs]}")
    x = _images(2, size)
    depth = shape.depth
    request = TapRequest(blocks=tuple(range(depth)), attentions=tuple(range(depth)) if shape.heads else ())
    with c.check("stem -> blocks -> head"):
        with torch.no_grad():
            want = a.model(x)
            t = a.stem()(x)
            seen = [FeatureSignature.of(a.feature_layout, tuple(t.shape[1:]))]
            for blk in a.blocks:
                t = blk(t)
                seen.append(FeatureSignature.of(a.feature_layout, tuple(t.shape[1:])))
            got = a.head()(t)
        bad = [i for i, (s, g) in enumerate(zip(sigs, seen)) if s != g]
        _require(not bad, f"signatures() declares {sigs[bad[0]]} at boundary {bad[0]} but the network gives {seen[bad[0]]}" if bad else "")
        _require(got.shape == want.shape, f"head output {tuple(got.shape)} != model output {tuple(want.shape)}")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if a.num_classes:
            _require(tuple(want.shape) == (2, a.num_classes), f"logits {tuple(want.shape)}, expected (2, {a.num_classes})")
    with c.check("taps"):
        with torch.no_grad():
            taps = a.forward_taps(x, request)
        _require(isinstance(taps, Taps), f"forward_taps returned {type(taps).__name__}, not Taps")
        torch.testing.assert_close(taps.logits, want, rtol=1e-5, atol=1e-5)
        want_stem = (2, *sigs[0].tensor_shape())
        _require(taps.stem is not None and tuple(taps.stem.shape) == want_stem,
                 f"stem tap {None if taps.stem is None else tuple(taps.stem.shape)}, expected {want_stem} (signature {sigs[0]})")
        _require(sorted(taps.blocks) == list(range(depth)), f"block taps {sorted(taps.blocks)}, requested {list(range(depth))}")
        for i, v in taps.blocks.items():
            want_blk = (2, *sigs[i + 1].tensor_shape())
            _require(tuple(v.shape) == want_blk, f"block tap {i} has shape {tuple(v.shape)}, expected {want_blk} (signature {sigs[i + 1]})")
        if shape.heads:
            _require(sorted(taps.attentions) == list(range(depth)), f"attention taps {sorted(taps.attentions)}, requested {list(range(depth))}")
        leftover = [i for i, blk in enumerate(a.blocks) if any(m._forward_hooks for m in blk.modules())]
        _require(not leftover, f"forward_taps left forward hooks on blocks {leftover}")
    if shape.heads:
        with c.check("attention taps"):
            owned = a.uncounted_macs()
            for i, blk in enumerate(a.blocks):
                att = a.attention(i)
                inside = {id(m) for m in blk.modules()}
                _require(id(att) in inside, f"attention({i}) is a {type(att).__name__} that is not part of block {i}; "
                                            f"return block {i}'s self-attention sublayer")
                here = [m for m in owned if id(m) in inside]
                _require(not here or any(m is mm for m in here for mm in att.modules()),
                         f"attention({i}) is a {type(att).__name__} without block {i}'s attention matmuls (the "
                         f"{type(here[0]).__name__ if here else ''} that uncounted_macs() declares); the attention tap "
                         f"must be the self-attention sublayer's output")
    with c.check("attention MACs"):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        from .pool.measure import count_macs

        declared = count_macs(a)
        # the math kernel: FlopCounterMode then sees scaled_dot_product_attention as the matmuls it is
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
            a.model(torch.zeros((1, *size)))
        flops = counter.get_total_flops()
        _require(2 * declared == flops,
                 f"count_macs gives {declared:,} MACs per image, FlopCounterMode {flops:,} FLOPs = {flops / 2:,.0f} MACs"
                 + (f": {flops // 2 - declared:,} MACs are not counted; declare the operations Linear/Conv2d hooks cannot "
                    f"see (the attention matmuls q @ k^T and attn @ v) in uncounted_macs()" if 2 * declared < flops else
                    f": {declared - flops // 2:,} MACs too many; uncounted_macs() declares operations the network does not run"))
    with c.check("save/load round trip"):
        _check_round_trip(c, a, x, registry)
    with c.check("resized"):
        new = _grown(shape)
        arch2 = a.resized(new)
        _require(json.loads(json.dumps(arch2)) == arch2, "resized() is not plain JSON")
        with torch.device("meta"):
            r = c.cls.from_arch(arch2)
        _require(r.shape == new, f"from_arch(resized({new})) has shape {r.shape}")
        _require(r.num_classes == a.num_classes, f"resized() changed num_classes {a.num_classes} -> {r.num_classes}")
    with c.check("float64"):
        a64 = copy.deepcopy(a)
        a64.model.double()
        with torch.no_grad():
            t64 = a64.forward_taps(x.double(), request)
        _require(t64.logits.dtype == torch.float64 and _finite(t64.logits), f"float64 network gave {t64.logits.dtype} logits or non-finite values")
        _require(all(v.dtype == torch.float64 for v in t64.blocks.values()), "float64 network gave block taps of another dtype")
    with c.check("bad input"):
        _raises_stitchkit_error(lambda: c.cls.from_arch({**arch, "stitchkit_conformance_unknown_key": 1}),
                                "from_arch with an unknown arch key")


def _check_round_trip(c: _Checker, a: AncestryAdapter, x: torch.Tensor, registry: Registry) -> None:
    """A one-row pool of the network, saved and loaded whole and lazily (rows rebuilt on the meta device,
    non-persistent buffers recomputed by ``restore_buffers``), computes what it computed."""
    import tempfile

    from .components.sequential import SequentialMethod
    from .io.storage import load_descendant, load_pool, save_pool
    from .pool.pool import Pool

    pool = Pool.from_method(SequentialMethod(), [a]).eval()
    with torch.no_grad():
        want = pool.descendant(0)(x)
    with tempfile.TemporaryDirectory(prefix="stitchkit-conformance-") as tmp:
        path = save_pool(pool, f"{tmp}/one-row.safetensors")
        for how, load in (("load_pool", lambda: load_pool(path, registry).descendant(0)),
                          ("load_descendant", lambda: load_descendant(path, 0, registry))):
            try:
                loaded = load().eval()
            except StitchkitError as exc:
                raise _CheckFailed(f"{how} of a saved one-row pool raised {type(exc).__name__}: {exc}") from None
            with torch.no_grad():
                got = loaded(x)
            _require(torch.equal(got, want),
                     f"{how} of a saved one-row pool computes other logits (max difference "
                     f"{(got - want).abs().max().item():.3g}); a tensor outside the state dict is not restored "
                     f"(restore_buffers) or arch() does not rebuild the network")


def _grown(shape: RowShape) -> RowShape:
    """A deeper, wider shape of the same stage structure (heads kept): what ``resized`` is checked with."""
    if not shape.stages:
        return RowShape(shape.depth + 1, shape.width * 2, shape.heads)
    return RowShape.staged([(d + 1, w * 2, h) for d, w, h in shape.stages])


# --------------------------------------------------------------------------- design
def _check_design(c: _Checker, registry: Registry) -> None:
    """In each family: ``rows(ancestry)`` is a non-empty list of RowShape, narrow first, the same every
    call; each row built with ``design.row_arch(ancestry.resized(row))`` and ``initialize``d keeps its shape and finite
    weights, reproducibly, and leaves the ancestry untouched; float64 stays float64. An ancestry too
    small to derive rows from (``1x1:1``) raises a StitchkitError."""
    for family, layout in _families(registry):
        with c.in_family(family, layout):
            _check_design_in(c, family.network(registry, family.teacher, seed=1))
    with c.check("bad input"):
        design = _seeded(0, lambda: c.example(ancestry=parse_row(FAMILIES[0].teacher)))
        _raises_stitchkit_error(lambda: design.rows(RowShape(1, 1, 1)), "rows() for a 1x1:1 ancestry (nothing to reduce)")


def _check_design_in(c: _Checker, ancestry: AncestryAdapter) -> None:
    shape = ancestry.shape
    with c.check("example"):
        design = _seeded(0, lambda: c.example(ancestry=shape))
    with c.check("rows"):
        rows = design.rows(shape)
        _require(isinstance(rows, list) and bool(rows) and all(isinstance(r, RowShape) for r in rows),
                 f"rows({shape}) returned {rows!r}; expected a non-empty list of RowShape")
        _require([r.width for r in rows] == sorted(r.width for r in rows), f"rows are not sorted narrow first: {[str(r) for r in rows]}")
    with c.check("deterministic"):
        again = _seeded(0, lambda: c.example(ancestry=shape))
        _require(design.rows(shape) == rows and again.rows(shape) == rows, "rows() differ between calls")

    def built(r: RowShape, anc: AncestryAdapter, dtype: torch.dtype) -> AncestryAdapter:
        torch.manual_seed(100)
        row = type(anc).from_arch(design.row_arch(anc.resized(r)))
        row.model.to(dtype)
        design.initialize(row, anc)
        return row

    with c.check("initialize"):
        before = _state(ancestry.model)
        for r in rows:
            row = built(r, ancestry, torch.float32)
            _require(row.shape == r, f"initialize changed row {r} into {row.shape}")
            bad = [k for k, v in row.model.state_dict().items() if v.is_floating_point() and not _finite(v)]
            _require(not bad, f"initialize left non-finite weights in row {r}: {bad[:3]}")
            diff = _same_state(_state(row.model), _state(built(r, ancestry, torch.float32).model))
            _require(diff is None, f"initialize of row {r} is not deterministic under a seed ({diff})")
        _require(_same_state(before, _state(ancestry.model)) is None, "initialize modified the ancestry")
    with c.check("float64"):
        anc64 = copy.deepcopy(ancestry)
        anc64.model.double()
        for r in rows:
            row = built(r, anc64, torch.float64)
            bad = [k for k, v in row.model.state_dict().items() if v.is_floating_point() and (v.dtype != torch.float64 or not _finite(v))]
            _require(not bad, f"a float64 row {r} has non-float64 or non-finite tensors after initialize: {bad[:3]}")


# --------------------------------------------------------------------------- loss
def _check_loss(c: _Checker, registry: Registry) -> None:
    """In each family: ``teacher_taps`` / ``student_taps`` are TapRequests within each network's depth;
    the loss of one forward pass is a finite 0-dim tensor whose gradient reaches the student and every
    parameter of the loss; the same seed gives the same loss module and value; float64 gives a float64
    value; taps missing what it requested raise a StitchkitError (MissingTapError). A loss asking for
    attention taps is not run on a family whose networks have no attention."""
    for family, layout in _families(registry):
        teacher, student = family.network(registry, family.teacher, seed=1), family.network(registry, family.student, seed=2)
        with c.in_family(family, layout):
            _check_loss_in(c, teacher, student, layout)


def _check_loss_in(c: _Checker, teacher: AncestryAdapter, student: AncestryAdapter, layout: str) -> None:
    student.model.train()  # as the trainer runs it: a frozen teacher in eval mode, the student training
    shapes = dict(teacher=teacher.shape, student=student.shape, layout=layout)
    with c.check("example"):
        loss = _seeded(0, lambda: c.example(**shapes))
    with c.check("taps"):
        treq, sreq = loss.teacher_taps(), loss.student_taps()
        for req, net, who in ((treq, teacher.shape, "teacher"), (sreq, student.shape, "student")):
            _require(isinstance(req, TapRequest), f"{who}_taps() returned {type(req).__name__}, not TapRequest")
            out = [i for i in (*req.blocks, *req.attentions) if not 0 <= i < net.depth]
            _require(not out, f"{who}_taps() asks for blocks {out} of a {net.depth}-block {who}")
    if (treq.attentions and not teacher.shape.heads) or (sreq.attentions and not student.shape.heads):
        return  # attention taps of a family without attention: not this loss's family
    x = _images(size=teacher.input_size)

    def value(lo: DistillationLoss, t_net: AncestryAdapter, s_net: AncestryAdapter, dtype: torch.dtype) -> tuple[torch.Tensor, Taps, Taps]:
        with torch.no_grad():
            t = t_net.forward_taps(x.to(dtype), treq)
        s = s_net.forward_taps(x.to(dtype), sreq)
        return lo(s, t), s, t

    with c.check("scalar"):
        v, s_taps, t_taps = value(loss, teacher, student, torch.float32)
        _require(isinstance(v, torch.Tensor) and v.dim() == 0, f"forward returned {getattr(v, 'shape', v)!r}, not a 0-dim tensor")
        _require(v.dtype == torch.float32 and _finite(v), f"loss is {v.item() if v.numel() == 1 else v} ({v.dtype}); expected a finite float32")
    with c.check("gradients"):
        v.backward()
        _require(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in student.model.parameters()),
                 "no gradient reaches the student's parameters")
        none = [n for n, p in loss.named_parameters() if p.requires_grad and (p.grad is None or not _finite(p.grad))]
        _require(not none, f"the loss's own parameters {none[:5]} get no (finite) gradient; parameters that never receive one cannot learn")
    with c.check("deterministic"):
        again = _seeded(0, lambda: c.example(**shapes))
        diff = _same_state(_state(loss), _state(again))
        _require(diff is None, f"example() under the same seed gives different loss parameters ({diff})")
        with torch.no_grad():
            v1, v2 = loss(s_taps, t_taps), again(s_taps, t_taps)
        _require(torch.equal(v1, v2), f"the same taps give different values: {v1.item()} and {v2.item()}")
    with c.check("float64"):
        l64, t64, s64 = copy.deepcopy(loss).double(), copy.deepcopy(teacher), copy.deepcopy(student)
        t64.model.double()
        s64.model.double()
        v64, _, _ = value(l64, t64, s64, torch.float64)
        _require(v64.dtype == torch.float64 and _finite(v64), f"float64 inputs give a {v64.dtype} loss {v64.item()}")
        v64.backward()
    if treq.blocks or treq.attentions or sreq.blocks or sreq.attentions:
        with c.check("bad input"):
            _raises_stitchkit_error(lambda: loss(Taps(logits=s_taps.logits), Taps(logits=t_taps.logits)),
                                    "forward on taps that lack the requested blocks/attentions")


# --------------------------------------------------------------------------- initializer
def _check_initializer(c: _Checker, registry: Registry) -> None:
    """In each family (``nn.Linear`` stitch layers on tokens and channels-last grids, 1x1 ``nn.Conv2d`` on
    maps): ``initialize`` writes every stitch layer of a ``sequential`` pool in place (same module and
    parameter objects, same shape and dtype, finite values: layers are pre-filled with NaN), leaves the
    rows and their train/eval mode alone, gives the same weights on a fresh pool under different global
    seeds (randomness only from ``context.seed``), keeps a float64 pool float64; an initializer with
    ``needs_images`` raises a StitchkitError without a (B, C, H, W) batch."""
    with c.check("needs_images"):
        _require(isinstance(c.cls.needs_images, bool), f"needs_images is {c.cls.needs_images!r}, not a bool")
    for family, layout in _families(registry):
        with c.in_family(family, layout):
            _check_initializer_in(c, family, registry)


def _check_initializer_in(c: _Checker, family: Family, registry: Registry) -> None:
    with c.check("example"):
        c.example(pool=_pool(family, registry))

    def run(dtype: torch.dtype, global_seed: int) -> dict[str, torch.Tensor]:
        pool = _pool(family, registry, dtype)
        context = InitContext(images=_images(size=pool.adapters[0].input_size), seed=0)
        init = c.example(pool=pool)
        objects = {n: (layer, layer.weight, layer.bias) for n, layer in pool.stitches.items()}
        shapes = {n: (tuple(layer.weight.shape), tuple(layer.bias.shape)) for n, layer in pool.stitches.items()}
        with torch.no_grad():
            for layer in pool.stitches.values():
                layer.weight.fill_(math.nan)
                layer.bias.fill_(math.nan)
        rows = _state(pool.rows)
        pool.rows.train()
        _reseed_globals(global_seed)
        init.initialize(pool, context)
        for n, (layer, w, b) in objects.items():
            _require(pool.stitches[n] is layer and layer.weight is w and layer.bias is b,
                     f"stitch layer {n!r} was replaced; write the existing parameters in place (with torch.no_grad(): .copy_())")
            for what, t, shape in (("weight", layer.weight, shapes[n][0]), ("bias", layer.bias, shapes[n][1])):
                _require(tuple(t.shape) == shape,
                         f"{what} of stitch layer {n!r} has shape {tuple(t.shape)}, expected {shape} "
                         f"({'nn.Linear: (out, in)' if layer.weight.dim() == 2 else 'a 1x1 nn.Conv2d: (out, in, 1, 1)'})")
                _require(t.dtype == dtype, f"stitch layer {n!r} became {t.dtype} on a {dtype} pool")
                _require(_finite(t), f"stitch layer {n!r} holds NaN or inf after initialize (not written, or a "
                                     f"degenerate solve; a {_layer_words(layer)})")
        _require(_same_state(rows, _state(pool.rows)) is None, "initialize changed the rows' weights; it may only write stitch layers")
        _require(all(m.training for m in pool.rows.modules()), "initialize left the rows in eval mode; restore their mode")
        return _state(pool.stitches)

    with c.check("writes every stitch layer"):
        first = run(torch.float32, 1)
    with c.check("deterministic"):
        diff = _same_state(first, run(torch.float32, 2))
        _require(diff is None, f"two runs with the same InitContext differ at {diff}; draw randomness only from context.seed")
    with c.check("float64"):
        run(torch.float64, 3)
    if c.cls.needs_images:
        with c.check("bad input"):
            pool = _pool(family, registry)
            init = c.example(pool=pool)
            images = _images(size=pool.adapters[0].input_size)
            _raises_stitchkit_error(lambda: init.initialize(pool, InitContext(images=None, seed=0)),
                                    "initialize without images (needs_images = True)")
            _raises_stitchkit_error(lambda: init.initialize(pool, InitContext(images=images[0], seed=0)),
                                    "initialize with a (C, H, W) tensor instead of a batch")


# --------------------------------------------------------------------------- sampler
def _check_sampler(c: _Checker, registry: Registry) -> None:
    """In each family: ``sample(generator)`` returns a non-empty list of paths from the given list; equal
    generator seeds give equal draws under different global seeds (randomness only from the generator,
    so every rank trains the same path); no paths, or MACs of the wrong length, raise a StitchkitError."""
    for family, layout in _families(registry):
        with c.in_family(family, layout):
            _check_sampler_in(c, _pool(family, registry))


def _check_sampler_in(c: _Checker, pool: Any) -> None:
    parts = pool.part_macs()
    paths = list(pool.paths)
    macs = [pool.path_macs(p, parts) for p in paths]
    with c.check("example"):
        sampler = c.example(list(paths), list(macs))

    def draws(s: PathSampler, seed: int, global_seed: int) -> list[list[str]]:
        _reseed_globals(global_seed)
        g = torch.Generator().manual_seed(seed)
        return [[p.name for p in s.sample(g)] for _ in range(16)]

    with c.check("returns given paths"):
        names = {p.name for p in paths}
        g = torch.Generator().manual_seed(0)
        for _ in range(16):
            got = sampler.sample(g)
            _require(isinstance(got, list) and bool(got), f"sample() returned {got!r}; expected a non-empty list of Path")
            for p in got:
                _require(isinstance(p, Path) and p in paths and p.name in names,
                         f"sample() returned {p.name if isinstance(p, Path) else repr(p)}, not one of the given paths")
    with c.check("deterministic"):
        for seed in (0, 1):
            a = draws(sampler, seed, 10)
            b = draws(c.example(list(paths), list(macs)), seed, 20)
            _require(a == b, f"two samplers with generators seeded {seed} drew {a[:4]}... and {b[:4]}...; "
                             "draw randomness only from the generator passed to sample()")
    with c.check("bad input"):
        _raises_stitchkit_error(lambda: c.example([], []), "a sampler over no paths")
        _raises_stitchkit_error(lambda: c.example(list(paths), list(macs)[:-1]), "MACs for one path fewer than given")


# --------------------------------------------------------------------------- method
def _check_method(c: _Checker, registry: Registry) -> None:
    """In each family: ``stitches(rows)`` gives uniquely named layers whose widths are widths of their
    rows; ``paths`` is a non-empty list of uniquely named paths that all validate and build descendants
    with finite ``(B, classes)`` logits, in float32 and float64; both are the same on every call; the
    default initializer and sampler are registered; no rows raise a StitchkitError."""
    for family, layout in _families(registry):
        with c.in_family(family, layout):
            _check_method_in(c, _rows(family, registry))
    with c.check("defaults registered"):
        method = c.example()
        for kind, default in (("initializer", method.default_initializer), ("sampler", method.default_sampler)):
            try:
                registry.get(kind, default)
            except StitchkitError as exc:
                raise _CheckFailed(f"default_{kind} {default!r}: {exc}") from None
    with c.check("bad input"):
        _raises_stitchkit_error(lambda: c.example().stitches([]), "stitches([]) (no rows)")


def _check_method_in(c: _Checker, rows: list[AncestryAdapter]) -> None:
    shapes = [r.shape for r in rows]
    with c.check("example"):
        method = c.example()
    with c.check("stitches"):
        specs = method.stitches(shapes)
        _require(isinstance(specs, list) and all(isinstance(s, StitchSpec) for s in specs), f"stitches() returned {specs!r}")
        names = [s.name for s in specs]
        _require(len(set(names)) == len(names), f"stitch layer names repeat: {names}")
        for s in specs:
            _require(0 <= s.src < len(shapes) and 0 <= s.dst < len(shapes)
                     and s.src_width in {w for _, w, _ in shapes[s.src].stage_shapes}
                     and s.dst_width in {w for _, w, _ in shapes[s.dst].stage_shapes},
                     f"stitch layer {s} does not fit rows {[str(r) for r in shapes]}")
    with c.check("paths validate"):
        paths = method.paths(shapes, specs)
        _require(isinstance(paths, list) and bool(paths) and all(isinstance(p, Path) for p in paths), f"paths() returned {paths!r}")
        table = {s.name: s for s in specs}
        for p in paths:
            try:
                p.validate([r.depth for r in shapes], table)
            except StitchkitError as exc:
                raise _CheckFailed(f"path {p.name} does not validate: {exc}") from None
        names = [p.name for p in paths]
        _require(len(set(names)) == len(names), "path names repeat (two paths run the same blocks)")
    with c.check("deterministic"):
        again = c.example()
        for m in (method, again):
            s2 = m.stitches(shapes)
            p2 = m.paths(shapes, s2)
            _require(s2 == specs and [(p.name, p.label) for p in p2] == [(p.name, p.label) for p in paths],
                     "stitches()/paths() differ between calls; enumerate them in a stable order")
    with c.check("descendants build"):
        from .pool.pool import Pool

        pool = Pool.from_method(method, rows)
        pool.eval()
        x = _images(size=rows[0].input_size)
        classes = rows[0].num_classes
        for dtype in (torch.float32, torch.float64):
            pool.to(dtype)
            with torch.no_grad():
                for p in pool.paths:
                    y = pool.descendant(p)(x.to(dtype))
                    _require(tuple(y.shape) == (BATCH, classes) and y.dtype == dtype and _finite(y),
                             f"descendant {p.name} gives {tuple(y.shape)} {y.dtype} logits (finite: {_finite(y)}); "
                             f"expected finite ({BATCH}, {classes}) {dtype}")


def _checker_of(kind: str) -> Callable[[_Checker, Registry], None]:
    """The check function the kind's table row names (:attr:`stitchkit.core.kinds.Kind.checker`)."""
    return globals()[KINDS[kind].checker]  # type: ignore[no-any-return]

"""The contracts a plugin implements.

Six kinds of component, each a small abstract class with a ``name`` and a
docstring: ancestry adapters, auxiliary designs, distillation losses, stitch
initializers, path samplers and methods. Plugins register subclasses through
the hooks in :mod:`stitchkit.core.hookspecs`; the host creates them by name.

Each kind also has a classmethod ``example(**context)`` that returns a small
working instance (declared ``(*args, **context)`` so that an override may name the
context keywords it uses); :mod:`stitchkit.testing` (the conformance suite) builds
components through it. The defaults call the constructor without arguments
(samplers: with the paths and MACs); a component whose constructor needs
arguments overrides it.
"""

from __future__ import annotations

import pathlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import Self

import torch
from torch import nn

from .errors import ConfigError, MissingTapError, PluginError
from .spec import FeatureSignature, Path, RowShape, StitchSpec

if TYPE_CHECKING:  # pragma: no cover
    from .plans import TrainingPlan
    from .protocols import PoolView, RegistryView


# --------------------------------------------------------------------------- taps
@dataclass
class Taps:
    """What one forward pass of a network exposes for distillation and stitching.

    ``stem`` is the output of the input stem (the input of block 0);
    ``blocks[i]`` the output tokens of block ``i``; ``attentions[i]`` the output of
    block ``i``'s self-attention sublayer (after its output projection, before
    the residual add). Only requested entries are filled; reading one that
    was not requested raises :class:`~stitchkit.core.errors.MissingTapError`.
    """

    logits: torch.Tensor
    stem: torch.Tensor | None = None
    blocks: dict[int, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.blocks = TapTable(self.blocks, what="block output")
        self.attentions = TapTable(self.attentions, what="attention output")

    def block_input(self, index: int) -> torch.Tensor:
        """Input tokens of block ``index`` (the stem output for block 0)."""
        if index == 0:
            if self.stem is None:
                raise MissingTapError("stem output was not tapped")
            return self.stem
        return self.blocks[index - 1]


class TapTable(dict):
    """Block index -> tapped tensor; a missing index is a :class:`~stitchkit.core.errors.MissingTapError`
    naming what was tapped, so a loss that forgot to request a tap gets a clear message."""

    def __init__(self, items: Mapping[int, torch.Tensor] = (), what: str = "tap") -> None:  # type: ignore[assignment]
        super().__init__(items)
        self.what = what

    def __missing__(self, key: int) -> torch.Tensor:
        raise MissingTapError(
            f"{self.what} {key} was not tapped (tapped: {sorted(self)}); request it in the consumer's "
            f"TapRequest (a loss's teacher_taps() / student_taps())"
        )


@dataclass(frozen=True)
class TapRequest:
    """Which block outputs and attention outputs a consumer needs from a network."""

    blocks: tuple[int, ...] = ()
    attentions: tuple[int, ...] = ()

    def __or__(self, other: TapRequest) -> TapRequest:
        return TapRequest(
            tuple(sorted(set(self.blocks) | set(other.blocks))),
            tuple(sorted(set(self.attentions) | set(other.attentions))),
        )


# --------------------------------------------------------------------------- ancestry adapter
class AncestryAdapter(ABC):
    """Adapter over one network of a family (an ancestry, an auxiliary model, an anchor).

    It exposes the network as *input stem -> blocks -> final norm and head*, taps
    for each block's output and each block's attention-sublayer output, and the
    means to build a same-family network of another shape (auxiliary models
    and pool rows are built this way).

    ``stem()`` and ``head()`` return modules that *share* the network's
    parameters, so a descendant that runs them trains the row itself.

    The adapter declares everything the core would otherwise have to guess
    about a family: the input size, the feature signature at every block
    boundary (:meth:`signatures`), which state-dict key is stem, block or head
    (:meth:`part_of`), the cost of operations a Linear/Conv hook cannot see
    (:meth:`uncounted_macs`) and what the published parameter convention
    leaves out (:meth:`published_exclusions`). The core assumes no key layout
    and no attribute name of any model library.
    """

    name: ClassVar[str]
    #: Layout of the tensors between blocks: ``tokens`` (B, N, C), ``nhwc`` (B, H, W, C) or ``map`` (B, C, H, W).
    feature_layout: ClassVar[str] = "tokens"
    #: Where the starting weights came from and what timm adapted (:func:`stitchkit.families.weights.create_timm_model`); None: random.
    weights_record: dict[str, Any] | None = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # -- construction -------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> AncestryAdapter:
        """Build a randomly initialised network from :meth:`arch` output.

        Called under ``torch.device('meta')`` by the planner, so it must not
        touch data or download anything. An arch it cannot build (e.g. an
        unknown key) raises :class:`~stitchkit.core.errors.ConfigError`.
        """

    @classmethod
    def example(cls, *args: Any, **context: Any) -> Self:
        """A small randomly initialised network of this family, for :mod:`stitchkit.testing`.

        Keep it tiny (a few blocks, narrow, small images); use the global torch
        RNG only, so that it is reproducible under ``torch.manual_seed``.
        There is no generic default: the base raises :class:`~stitchkit.core.errors.PluginError`.
        """

        raise PluginError(
            f"ancestry adapter {getattr(cls, 'name', cls.__name__)!r} has no example(): override the classmethod "
            f"example() to return a small network of the family (stitchkit.testing needs it)"
        )

    @classmethod
    def from_name(cls, name: str, *, pretrained: bool = False, checkpoint: str | None = None, **kwargs: Any) -> AncestryAdapter:
        """Create a network by its registered model name (e.g. a timm name).

        Adapters without a model registry of their own keep this default.
        """

        raise ConfigError(f"ancestry adapter {cls.name!r} cannot create models by name ({name!r})")

    @abstractmethod
    def arch(self) -> dict[str, Any]:
        """A JSON-serialisable description :meth:`from_arch` rebuilds the network from."""

    @classmethod
    def timm_model_args(cls, arch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The timm registry name and JSON keyword arguments with which ``timm.create_model`` builds a
        network of ``arch`` as itself: what a single-row export's ``config.json`` says (``architecture``,
        ``model_args``) so timm's ``local-dir:``/``hf-hub:`` loaders rebuild the row. Families that are no
        timm model keep this default, which refuses."""
        from .errors import ConfigError

        raise ConfigError(
            f"rows of the {getattr(cls, 'name', cls.__name__)!r} adapter have no timm model to write as a timm folder "
            "(the adapter does not implement timm_model_args); export without --hf"
        )

    @abstractmethod
    def resized(self, shape: RowShape) -> dict[str, Any]:
        """The arch of a same-family network of another shape (depth, width and heads; per stage for
        hierarchical families). A shape the family cannot take raises :class:`~stitchkit.core.errors.ConfigError`."""

    # -- structure ------------------------------------------------------------
    @property
    @abstractmethod
    def shape(self) -> RowShape:
        """Depth, width and heads (per stage for hierarchical families)."""

    @property
    @abstractmethod
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The blocks, in order, numbered across stages. Block ``i`` maps a tensor of
        ``signatures()[i]`` to one of ``signatures()[i + 1]`` (the same for a plain ViT)."""

    def signatures(self) -> list[FeatureSignature]:
        """The feature signature of every block boundary: entry ``i`` is the input of block ``i``
        (entry 0 the stem output, the last entry the last block's output).

        The default runs a copy of the network on the meta device (no memory,
        no data) at :attr:`input_size` and reads the shapes in :attr:`feature_layout`.
        """
        cached = getattr(self, "_stitchkit_signatures", None)
        if cached is not None:
            return list(cached)
        with torch.device("meta"):
            twin = type(self).from_arch(self.arch())
            x = torch.zeros((1, *self.input_size))
            twin.model.eval()
            with torch.no_grad():
                x = twin.stem()(x)
                shapes = [tuple(x.shape[1:])]
                for blk in twin.blocks:
                    x = blk(x)
                    shapes.append(tuple(x.shape[1:]))
        sigs = [FeatureSignature.of(self.feature_layout, s) for s in shapes]
        self._stitchkit_signatures = sigs
        return list(sigs)

    def uncounted_macs(self) -> dict[nn.Module, MacRule]:
        """Modules doing multiply-accumulates that hooks on ``nn.Linear`` / ``nn.Conv2d`` do not see
        (the two attention matmuls), each with a rule ``(module, inputs, output) -> MACs``.

        :func:`stitchkit.pool.measure.count_macs` runs these rules as forward hooks. Default: none.
        """
        return {}

    def restore_buffers(self, module: nn.Module) -> None:
        """Recompute the non-persistent buffers (not in the state dict) inside ``module``, a part of a
        network of this family built on the meta device whose weights were then assigned (lazy
        loading). Families whose every tensor is in the state dict keep this default: nothing."""

    def published_exclusions(self) -> tuple[str, ...]:
        """State-dict keys of this network that a *stitched* descendant starting in it leaves out
        of the published parameter count, where it runs them: SN-Net's code counts a stitched DeiT
        without its class token and position embedding, and a stitched Swin without the front
        anchor's patch-merging layers. Default: none."""
        return ()

    @abstractmethod
    def stem(self) -> nn.Module:
        """Module mapping images to the tokens block 0 takes (shares parameters)."""

    @abstractmethod
    def head(self) -> nn.Module:
        """Module mapping the last block's tokens to logits: final norm, pooling, classifier."""

    def head_without_norm(self) -> nn.Module:
        """The head minus its final norm (same parameters, the norm's kept but unused).

        Only pools imported from the official SN-Net code use it: its stitched
        forward skips the end anchor's final norm (see docs/snnet.md).
        Families that cannot leave the norm out keep this default, which refuses.
        """

        raise ConfigError(
            f"ancestry adapter {getattr(self, 'name', type(self).__name__)!r} cannot run its head without the final norm "
            f"(pool option stitched_final_norm = false); implement head_without_norm() in the adapter"
        )

    @abstractmethod
    def attention(self, index: int) -> nn.Module:
        """The self-attention sublayer of block ``index``; its output is the attention tap."""

    @abstractmethod
    def part_of(self, param_name: str) -> tuple[str, int | None]:
        """Which part a state-dict key belongs to: ``("stem", None)``, ``("block", i)`` or ``("head", None)``."""

    # -- concrete helpers ----------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.arch().get("num_classes", 0))

    def forward_taps(self, x: torch.Tensor, request: TapRequest = TapRequest()) -> Taps:
        """One forward pass returning the logits and the requested taps.

        The taps come from the same pass that makes the logits (forward hooks),
        so a frozen teacher is run once per step.
        """
        taps = Taps(logits=torch.empty(0))
        handles = []
        stem = self.stem()
        blocks = self.blocks
        try:
            for i in request.blocks:
                handles.append(blocks[i].register_forward_hook(_store(taps.blocks, i)))
            for i in request.attentions:
                handles.append(self.attention(i).register_forward_hook(_store(taps.attentions, i)))
            x = stem(x)
            taps.stem = x
            for blk in blocks:
                x = blk(x)
            taps.logits = self.head()(x)
        finally:
            for h in handles:
                h.remove()
        return taps


MacRule = Callable[[nn.Module, tuple[Any, ...], Any], int]


def _store(table: dict[int, torch.Tensor], key: int):
    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        table[key] = output

    return hook


# --------------------------------------------------------------------------- auxiliary design
class AuxiliaryDesign(ABC):
    """Derives the auxiliary models (the pool's rows) from an ancestry.

    ``rows`` returns row shapes sorted by width (narrow first). ``initialize``
    sets a freshly built row's weights before distillation (random by default).
    """

    name: ClassVar[str]

    @classmethod
    def example(cls, *args: Any, **context: Any) -> Self:
        """An instance for :mod:`stitchkit.testing`; ``context["ancestry"]`` is the ancestry's
        :class:`~stitchkit.core.spec.RowShape`. The default calls ``cls()``."""
        return cls()

    @abstractmethod
    def rows(self, ancestry: RowShape) -> list[RowShape]:
        """Shapes of the auxiliary models, narrow to wide.

        Raises :class:`~stitchkit.core.errors.ConfigError` when the ancestry admits
        no such rows (e.g. a one-block, width-1 ancestry cannot be reduced).
        """

    def initialize(self, row: AncestryAdapter, ancestry: AncestryAdapter) -> None:
        """Initialise ``row`` from ``ancestry``; the default keeps the random init."""

    def row_arch(self, arch: dict[str, Any]) -> dict[str, Any]:
        """The architecture a row is built from, given the ancestry's resized to the row
        (:meth:`AncestryAdapter.resized`). The default keeps it; a design sets training-time
        options of its rows here (``drop_path_rate``), which the ancestry's shape cannot carry."""
        return arch


# --------------------------------------------------------------------------- distillation loss
class DistillationLoss(nn.Module, ABC):
    """A loss between a student's and a teacher's taps.

    It is an ``nn.Module`` because some losses own learnable parameters (the
    block- and attention-based transformation matrices ``W`` and ``M``), which
    the trainer optimises jointly with the student.
    """

    name: ClassVar[str]

    @classmethod
    def example(cls, *args: Any, **context: Any) -> Self:
        """An instance for :mod:`stitchkit.testing`; ``context["teacher"]`` and ``context["student"]``
        are the two networks' :class:`~stitchkit.core.spec.RowShape`. The default calls ``cls()``."""
        return cls()

    @classmethod
    def for_models(cls, teacher: RowShape, student: RowShape, /, *args: Any, **options: Any) -> Self:
        """The loss between a teacher and a student of these shapes, with a config's ``loss_args`` as
        ``options``; this is how a build makes it. The default ignores the shapes and calls
        ``cls(**options)``; a loss whose size depends on the two networks overrides it, naming its
        options as keyword parameters (``stitchkit plugins`` lists them)."""
        return cls(**options)

    @abstractmethod
    def teacher_taps(self) -> TapRequest:
        """Taps this loss needs from the teacher."""

    @abstractmethod
    def student_taps(self) -> TapRequest:
        """Taps this loss needs from the student."""

    @abstractmethod
    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:  # type: ignore[override]
        """A scalar loss. Reading a tap that was not requested raises :class:`~stitchkit.core.errors.MissingTapError`."""


# --------------------------------------------------------------------------- stitch initializer
@dataclass
class InitContext:
    """What a stitch initializer may use: a batch of training images and a seed."""

    images: torch.Tensor | None = None
    seed: int = 0


class StitchInitializer(ABC):
    """Sets the weights and biases of a pool's stitch layers."""

    name: ClassVar[str]
    needs_images: ClassVar[bool] = False

    @classmethod
    def example(cls, *args: Any, **context: Any) -> Self:
        """An instance for :mod:`stitchkit.testing`; ``context["pool"]`` is the pool it will initialise.

        An initializer that reads method-specific data from a pool (e.g.
        learned matrices in ``pool.extras``) may add it to that pool here.
        The default calls ``cls()``.
        """
        return cls()

    @abstractmethod
    def initialize(self, pool: PoolView, context: InitContext) -> None:
        """Write every stitch layer of ``pool`` in place (keeping its parameter objects and dtype).

        An initializer with ``needs_images = True`` raises
        :class:`~stitchkit.core.errors.ConfigError` when ``context.images`` is not a
        ``(B, C, H, W)`` batch.
        """


# --------------------------------------------------------------------------- path sampler
class PathSampler(ABC):
    """Chooses the path(s) trained in one optimisation step.

    ``sample`` returns one path, or several whose gradients are accumulated
    into one step (the sandwich rule). It must draw randomness only from the
    generator it is given: the trainer seeds it identically on every rank, so
    all ranks train the same path.
    """

    name: ClassVar[str]

    def __init__(self, paths: Sequence[Path], macs: Sequence[int] | None = None) -> None:

        if not paths:
            raise ConfigError(f"the {getattr(self, 'name', type(self).__name__)!r} path sampler needs at least one path")
        if macs is not None and len(macs) != len(paths):
            raise ConfigError(f"got {len(macs)} MAC counts for {len(paths)} paths")
        self.paths = list(paths)
        self.macs = list(macs) if macs is not None else None

    @classmethod
    def example(cls, paths: Sequence[Path], macs: Sequence[int] | None = None, **context: Any) -> Self:
        """An instance over ``paths`` for :mod:`stitchkit.testing`. The default calls ``cls(paths, macs)``."""
        return cls(paths, macs)

    @abstractmethod
    def sample(self, generator: torch.Generator) -> list[Path]:
        """The paths to train in this step."""


# --------------------------------------------------------------------------- method
class Method(ABC):
    """A stitching method: which stitch layers a pool has and which paths it allows,
    plus the default components used to build one.
    """

    name: ClassVar[str]
    default_initializer: ClassVar[str] = "random"
    default_sampler: ClassVar[str] = "uniform"

    @classmethod
    def example(cls, *args: Any, **context: Any) -> Self:
        """An instance for :mod:`stitchkit.testing`. The default calls ``cls()``."""
        return cls()

    @abstractmethod
    def stitches(self, rows: Sequence[RowShape]) -> list[StitchSpec]:
        """The stitch layers of a pool with these rows (sorted by width).

        Rows it cannot stitch (at least: no rows) raise :class:`~stitchkit.core.errors.ConfigError`.
        """

    @abstractmethod
    def paths(self, rows: Sequence[RowShape], stitches: Sequence[StitchSpec]) -> list[Path]:
        """Every descendant the method allows, in a stable order."""

    def check_config(self, config: Mapping[str, Any], *, registry: RegistryView) -> None:
        """Raise :class:`~stitchkit.core.errors.ConfigError` for a config :meth:`build` would refuse.

        Called by ``stitchkit build`` and the demo before the first phase, so a
        typo is reported in a second, not after hours of training. Must not
        train, download or write anything. The default checks nothing.
        """

    def training_phases(
        self, config: Mapping[str, Any], *, spec: Any, registry: RegistryView, eval_images: int, pretrain_epochs: int
    ) -> TrainingPlan:
        """The phases :meth:`build` runs for ``config``, priced by ``stitchkit cost`` (:mod:`stitchkit.apps.cost`).

        ``spec`` is the data's :class:`~stitchkit.engine.data.DataSpec`. Build
        networks on the meta device (nothing trained, nothing downloaded); give
        loaded weights a ``"pretraining"`` phase of ``pretrain_epochs``, and
        fill :attr:`~stitchkit.core.plans.TrainingPlan.alone` with each descendant
        trained on its own by the method's single-network recipe.
        """

        raise ConfigError(f"method {self.name!r} does not describe its training phases, so 'stitchkit cost' cannot price it")

    def build(self, config: Mapping[str, Any], *, out_dir: pathlib.Path, registry: RegistryView) -> pathlib.Path:
        """Run the method's whole pipeline from a resolved config; return the pool file.

        Methods that only define a path set (like the core's ``sequential``)
        do not build; ``stitchkit build`` then says so.
        """

        raise ConfigError(f"method {self.name!r} defines paths only and cannot run 'stitchkit build'")

    def import_checkpoint(self, path: pathlib.Path, *, anchors: Sequence[str], registry: RegistryView) -> Any:
        """A :class:`~stitchkit.pool.pool.Pool` holding a checkpoint of the method's original code.

        ``anchors`` names the networks the checkpoint holds, smallest first.
        Methods without an original checkpoint format keep this default;
        ``stitchkit import`` then says so.
        """

        raise ConfigError(f"method {self.name!r} cannot import checkpoints of another code base")

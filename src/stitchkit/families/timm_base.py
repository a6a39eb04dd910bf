"""What the timm-based adapters share: presenting a hierarchical network's stages as one list of
blocks, and small helpers (starting weights are :mod:`stitchkit.families.weights`).

Hierarchical families (Swin, ResNet, ConvNeXt) change resolution and width
between stages. stitchkit numbers their blocks across stages; a stage's
downsampling layer, where the family keeps it outside the blocks (timm's Swin
and ConvNeXt), travels with the stage's first block (:class:`StageEntry`), so
every block is a self-contained step from one feature signature to the next
and a key of the model belongs to exactly one block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.interfaces import AncestryAdapter


NetworkT = TypeVar("NetworkT", bound=nn.Module)


class StageEntry(nn.Module):
    """The first block of a stage together with the stage's downsampling layer (run first)."""

    def __init__(self, downsample: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.downsample = downsample
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.downsample(x))


def stage_blocks(stage: Any) -> list[nn.Module]:
    """A stage's blocks, its downsampling layer (``stage.downsample``, unless an identity) joined to the first."""
    blocks: list[nn.Module] = list(stage.blocks)
    if blocks and not isinstance(stage.downsample, nn.Identity):
        blocks[0] = StageEntry(stage.downsample, blocks[0])
    return blocks


def planning_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` or ``[224, 224]`` as ``(224, 224)``: the image size a CNN adapter plans MACs and signatures at."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return (int(size[0]), int(size[1]))


class StagedAdapter(AncestryAdapter):
    """An adapter for a hierarchical family: its stages' blocks numbered across stages as one list,
    ``_starts[s]`` the index of stage ``s``'s first block, and the stem and head modules it was given.

    Key ownership is declared, not coded: a parameter under one of :attr:`stem_keys` is the stem's,
    under :attr:`head_keys` the head's, and ``<stages_key><s>.<downsample|blocks.b>...`` belongs to a
    block (:func:`stage_of`); a family whose keys follow another scheme overrides :meth:`part_of`.
    """

    #: State-dict key prefixes of the stem's and of the head's parameters.
    stem_keys: ClassVar[tuple[str, ...]] = ()
    head_keys: ClassVar[tuple[str, ...]] = ()
    #: Prefix of the stages' keys (``stages.`` for ``stages.<s>...``).
    stages_key: ClassVar[str] = "stages."
    #: timm's class, named in messages.
    network: ClassVar[str] = "network"

    def __init__(self, model: nn.Module, stages: Iterable[Sequence[nn.Module]], stem: nn.Module, head: nn.Module) -> None:
        super().__init__(model)
        blocks: list[nn.Module] = []
        self._starts: list[int] = []
        for stage in stages:
            self._starts.append(len(blocks))
            blocks.extend(stage)
        self._blocks = nn.ModuleList(blocks)
        self._stem = stem
        self._head = head

    @property
    def blocks(self) -> nn.ModuleList:
        return self._blocks

    def stem(self) -> nn.Module:
        return self._stem

    def head(self) -> nn.Module:
        return self._head

    def attention(self, index: int) -> nn.Module:
        """The block's ``attn`` module (inside the :class:`StageEntry` of a stage's first block)."""
        block: Any = self._blocks[index]
        inner: Any = block.block if isinstance(block, StageEntry) else block
        if not hasattr(inner, "attn"):
            raise ConfigError(f"{self.name} blocks have no attention: nothing to tap or distil there (use block-level losses)")
        return inner.attn  # type: ignore[no-any-return]

    def part_of(self, param_name: str) -> tuple[str, int | None]:
        if param_name.startswith(self.stem_keys):
            return "stem", None
        if param_name.startswith(self.head_keys):
            return "head", None
        index = stage_of(param_name, self.stages_key, self._starts, ("downsample", "blocks"))
        if index is None:
            raise ConfigError(f"{self.name}: state-dict key {param_name!r} belongs to no part of a {self.network}")
        return "block", index


def build_network(network: Callable[..., NetworkT], arch: Mapping[str, Any], **kwargs: Any) -> NetworkT:
    """timm's ``network(**kwargs)``; an arch timm cannot build (often one read from a file) is one ConfigError
    naming the class and the arch, not a traceback from inside timm."""
    try:
        return network(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"cannot build a timm {network.__name__} from arch {dict(arch)}: {exc}") from exc


def parts_in_order(model: nn.Module, *names: str) -> nn.Sequential:
    """The network's own modules ``names``, run in that order and kept under the same names, so a
    stem or head built this way shares the network's parameters and its state-dict keys are the network's."""
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in names))


def on_meta() -> bool:
    """True inside ``with torch.device("meta")`` (structure only: planning, lazy loading)."""
    get = getattr(torch, "get_default_device", None)
    return get is not None and get().type == "meta"


def stage_of(key: str, prefix: str, starts: list[int], stage_keys: tuple[str, ...]) -> int | None:
    """Block index of a key ``<prefix><s>.<...>``: the stage's ``downsample`` belongs to the stage's first block,
    ``blocks.<b>`` (or ``<b>`` when ``stage_keys`` is empty) to block ``starts[s] + b``."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split(".")
    s = int(parts[0])
    rest = parts[1:]
    if rest and rest[0] == "downsample" and "downsample" in stage_keys:
        return starts[s]
    if stage_keys and rest[0] == "blocks":
        return starts[s] + int(rest[1])
    if not stage_keys:
        return starts[s] + int(rest[0])
    raise ConfigError(f"state-dict key {key!r} belongs to no block of the stage")


def restore_timm_buffers(module: nn.Module) -> None:
    """timm's convention: modules with non-persistent buffers (Swin's relative position index and
    attention mask) recompute them in ``init_non_persistent_buffers``. Buffers still on the meta
    device get real storage on the device of the module's weights first."""
    for m in module.modules():
        init = getattr(m, "init_non_persistent_buffers", None)
        own = [n for n, b in m._buffers.items() if b is not None and b.device.type == "meta"]
        if init is None or not own:
            continue
        device = next((p.device for p in m.parameters() if p.device.type != "meta"), torch.device("cpu"))
        for name in own:
            m._buffers[name] = torch.empty_like(m._buffers[name], device=device)  # type: ignore[arg-type]
        init()


def check_kwargs(arch: dict[str, Any], allowed: set[str], family: str) -> None:
    """An arch key the family does not know is a ConfigError naming it (not a TypeError deep in timm)."""
    unknown = sorted(set(arch) - allowed)
    if unknown:
        raise ConfigError(f"cannot build a {family} network from arch keys {unknown}: unknown (known: {sorted(allowed)})")

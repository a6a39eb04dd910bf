"""Documented limits on every size a user or a file can ask for ("bound before you build").

Why: a number like ``depth = 1000000`` costs nothing to write but minutes and
gigabytes to build, so every size is checked against these limits *before*
any module is allocated: on the command line, in configs and in pool-file
metadata. The limits are far above any published model (ViT-22B has 48
blocks of width 6144 and 48 heads) and are listed in ``docs/format.md``.

The checks are family-agnostic: they look at integers by what their key
says (``depth``, ``*_dim``, ``heads``, ``img_size``, ``num_classes``) and bound
every other integer in an architecture description generically, so adapters
for other families (Swin, ResNet, ConvNeXt) are covered without listing their keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import LimitError

#: Rows (learngene / anchor networks) in one pool.
MAX_ROWS = 64
#: Blocks in one row (or in a config's model).
MAX_DEPTH = 256
#: Blocks of all rows of one file together: what a reader builds (on the meta device, a few ms per
#: block) before it can compare the architecture with the file's tensors.
MAX_TOTAL_BLOCKS = 512
#: Width (embedding dimension / channels) of a row.
MAX_WIDTH = 65_536
#: Attention heads of a row.
MAX_HEADS = 1024
#: Input image side, in pixels.
MAX_IMG_SIZE = 8192
#: Pixels of one source image (an ImageFolder file): the largest input a model can take, ``MAX_IMG_SIZE``
#: squared; a bigger one (a decompression bomb, a wrong file) is refused from its header before decoding.
MAX_IMAGE_PIXELS = MAX_IMG_SIZE * MAX_IMG_SIZE
#: Classifier outputs.
MAX_CLASSES = 1_000_000
#: Descendants (paths) of one pool.
MAX_PATHS = 10_000
#: Stitch layers of one pool.
MAX_STITCHES = 10_000
#: Objects plus arrays (``{`` and ``[`` characters) in one JSON document of a file's header,
#: counted before parsing, so a crafted header cannot make the (strict, pure-Python) parse slow.
MAX_JSON_CONTAINERS = 200_000
#: Batch size of a latency measurement or a training / evaluation step.
MAX_BATCH_SIZE = 65_536
#: Any other integer in an architecture description (patch size, channels, ...).
MAX_ARCH_INT = 1_000_000
#: Nesting of an architecture description (dicts and lists).
MAX_ARCH_NESTING = 8

#: (key test, limit, what) for integers found in an architecture description, first match wins.
_NAMED: list[tuple[Any, int, str]] = [
    (lambda k: "img_size" in k or k in ("image_size", "input_size"), MAX_IMG_SIZE, "MAX_IMG_SIZE"),
    (lambda k: k == "num_classes", MAX_CLASSES, "MAX_CLASSES"),
    (lambda k: "depth" in k, MAX_DEPTH, "MAX_DEPTH"),
    (lambda k: "heads" in k, MAX_HEADS, "MAX_HEADS"),
    (lambda k: k.endswith(("dim", "dims", "width", "widths", "channels", "chans", "features")), MAX_WIDTH, "MAX_WIDTH"),
]


def check_int(value: Any, name: str, *, minimum: int = 1, maximum: int, limit: str = "") -> int:
    """``value`` as an int in ``[minimum, maximum]``, else a one-line :class:`LimitError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitError(f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        where = f" (stitchkit.core.limits.{limit})" if limit else ""
        raise LimitError(f"{name} must be between {minimum:,} and {maximum:,}{where}, got {value:,}")
    return value


def check_number(value: Any, name: str, *, minimum: float = -math.inf, maximum: float = math.inf,
                 exclusive_minimum: bool = False) -> float:
    """``value`` as a finite float in range (NaN and infinities are always refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LimitError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise LimitError(f"{name} must be a finite number, got {value!r}")
    if v < minimum or (exclusive_minimum and v == minimum) or v > maximum:
        low = f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}"
        high = f" and <= {maximum:g}" if maximum != math.inf else ""
        raise LimitError(f"{name} must be {low}{high}, got {value!r}")
    return v


def check_row(depth: int, width: int, heads: int, where: str) -> None:
    """A row's (or a stage's) declared shape within the limits; ``heads = 0``: no attention (a CNN stage).
    Only sizes: how heads relate to the width (a ViT's ``head_dim``) is the family adapter's rule."""
    check_int(depth, f"{where} depth", maximum=MAX_DEPTH, limit="MAX_DEPTH")
    check_int(width, f"{where} width", maximum=MAX_WIDTH, limit="MAX_WIDTH")
    check_int(heads, f"{where} heads", minimum=0, maximum=MAX_HEADS, limit="MAX_HEADS")


def check_arch(arch: Mapping[str, Any], where: str) -> None:
    """Every integer of an architecture description within its limit, every float finite.

    Integers are bounded by what their key names (see ``_NAMED``) or by
    :data:`MAX_ARCH_INT`; strings are capped at 1,000 characters.
    """

    def walk(value: Any, key: str, at: str, level: int) -> None:
        if level > MAX_ARCH_NESTING:
            raise LimitError(f"{where}: arch nests deeper than {MAX_ARCH_NESTING} levels at {at}")
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k), f"{at}.{k}" if at else str(k), level + 1)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, key, f"{at}[{i}]", level + 1)
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, int):
            limit, name = next(((lim, n) for test, lim, n in _NAMED if test(key)), (MAX_ARCH_INT, "MAX_ARCH_INT"))
            low = 0 if name != "MAX_ARCH_INT" else -MAX_ARCH_INT
            check_int(value, f"{where}: arch {at}", minimum=low, maximum=limit, limit=name)
        elif isinstance(value, float):
            check_number(value, f"{where}: arch {at}", minimum=-MAX_ARCH_INT, maximum=MAX_ARCH_INT)
        elif isinstance(value, str) and len(value) > 1000:
            raise LimitError(f"{where}: arch {at} is a string of {len(value):,} characters (at most 1,000)")

    walk(arch, "", "", 0)

"""Every error stitchkit raises on purpose derives from :class:`StitchkitError`.

Each message says what went wrong, where (file, key, plugin, shape) and what
to do about it, so the CLI can print it on one line without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class StitchkitError(Exception):
    """Base class of all stitchkit errors."""


class PoolFormatError(StitchkitError):
    """A file is not a valid stitchkit pool or descendant file.

    Raised for a truncated file, a missing or unsupported format version, a
    metadata/tensor mismatch (missing tensor, wrong shape or dtype), metadata
    that fails the schema, or a safetensors file that stitchkit did not write.
    ``path`` is the file and ``problem`` the reason.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnknownComponentError(StitchkitError, LookupError):
    """No component of this kind is registered under this name."""

    def __init__(self, kind: str, name: str, available: Iterable[str], broken: Iterable[str] = ()) -> None:
        self.kind, self.name = kind, name
        self.available = sorted(available)
        self.broken = list(broken)
        close = difflib.get_close_matches(name, self.available, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(self.available) or "none"
        skipped = (
            f"; skipped broken plugin(s) that may provide it: {'; '.join(self.broken)}" if self.broken else ""
        )
        super().__init__(
            f"unknown {kind} {name!r}{hint} (registered {kind}s: {listing}{skipped}; "
            f"run 'stitchkit plugins' to see where each comes from)"
        )


class DuplicateComponentError(StitchkitError):
    """Two plugins registered the same name for one kind of component."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        self.kind, self.name, self.first, self.second = kind, name, first, second
        super().__init__(
            f"{kind} {name!r} is registered twice: by plugin {first!r} and by plugin "
            f"{second!r}; uninstall one of them or rename the component"
        )


class PluginError(StitchkitError):
    """A plugin is malformed: a misspelled hook, or a bad registration."""


class MissingTapError(StitchkitError, KeyError):
    """A consumer read a tap (block or attention output) that its :class:`~stitchkit.core.interfaces.TapRequest` did not ask for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PathError(StitchkitError, ValueError):
    """A path does not fit the pool it is applied to."""


class ConfigError(StitchkitError, ValueError):
    """A config file or override is invalid."""


class CheckpointError(StitchkitError):
    """A training checkpoint is corrupt or belongs to a different run config."""


class BudgetError(StitchkitError):
    """No descendant fits the requested budget."""


class FileError(StitchkitError):
    """A path cannot be used: a special file, an output that would destroy an input,
    an output directory locked by another process, or an OS error reading or writing it."""


class LimitError(ConfigError):
    """A size (depth, width, heads, image size, classes, rows, paths, batch size) is
    outside the documented limits of :mod:`stitchkit.core.limits`."""

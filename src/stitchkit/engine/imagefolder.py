"""ImageFolder directories that cannot lie: every image found once, in one split, checked before training.

torchvision's ``ImageFolder`` walks with ``os.walk(followlinks=True)``: a
symlink back into the tree (``ln -s .. a/loop``) is walked again and again,
so 30 images became 738 training and 246 test images with the same files on
both sides of the split, and a model of random noise scored 98 % on "test".
This walk follows a directory symlink only into a directory it has not seen
(by device and inode), counts a file once however many paths lead to it
(symlinks, hard links), and refuses a file that two classes or two split
folders claim. Each image is then opened before the first phase: a truncated
or foreign file, or one whose pixel count is beyond what any model can take,
is one line naming it instead of an error in the middle of an epoch.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from ..core import limits
from ..core.errors import ConfigError

log = logging.getLogger("stitchkit")

#: File identity: the same file under any name (symlink or hard link).
FileId = tuple[int, int]


class FolderWalk:
    """What walking one or more split folders found: per folder its classes and samples, and what was skipped.

    Directories seen anywhere (every split folder and every class folder
    first) are not walked twice; a file seen anywhere keeps its first path.
    """

    def __init__(self) -> None:
        self.dirs: dict[FileId, str] = {}
        self.files: dict[FileId, tuple[str, str, str]] = {}  # id -> (path, split folder, class)
        self.skipped_dirs: list[tuple[str, str]] = []  # (link, the directory walked already)
        self.duplicates: list[tuple[str, str]] = []  # (second path, first path), same class

    def reserve(self, folders: Iterable[str]) -> None:
        """Mark split and class folders as their own: a link to one from elsewhere is never walked as part of another."""
        for folder in folders:
            for directory in [folder, *_class_dirs(folder)]:
                self.dirs.setdefault(_id(os.stat(directory)), directory)

    def samples(self, folder: str, where: str) -> tuple[list[str], list[tuple[str, int]]]:
        """``(classes, samples)`` of ``folder`` in torchvision's order (classes sorted, then paths sorted)."""
        classes = sorted(os.path.basename(d) for d in _class_dirs(folder))
        if len(classes) < 2:
            raise ConfigError(
                f"{where}: {folder} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); a classifier needs "
                "at least two: give train/ (+ val/, test/) or the root one folder of images per class"
            )
        samples: list[tuple[str, int]] = []
        for index, name in enumerate(classes):
            top = os.path.join(folder, name)
            found = 0
            for root, fnames in sorted(self._walk(top, where)):
                for fname in sorted(fnames):
                    path = os.path.join(root, fname)
                    if path.lower().endswith(IMG_EXTENSIONS) and self._first(path, folder, name, where):
                        samples.append((path, index))
                        found += 1
            if not found:
                raise ConfigError(
                    f"{where}: class folder {top} holds no image ({', '.join(IMG_EXTENSIONS)}); add images or remove the folder"
                )
        return classes, samples

    def _walk(self, top: str, where: str) -> list[tuple[str, list[str]]]:
        """``(directory, file names)`` under ``top``, entering a directory (or a link to one) only the first time."""
        out: list[tuple[str, list[str]]] = []
        stack = [top]
        while stack:
            directory = stack.pop()
            dirs: list[str] = []
            files: list[str] = []
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        try:
                            is_dir = entry.is_dir()  # follows symlinks
                        except OSError:  # a link loop onto itself: a file that cannot be read (refused if an image)
                            is_dir = False
                        (dirs if is_dir else files).append(entry.name)
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read the folder {directory} ({exc.strerror or exc}); check its permissions") from None
            out.append((directory, files))
            for name in dirs:
                path = os.path.join(directory, name)
                key = _id(os.stat(path))
                if key in self.dirs:
                    if self.dirs[key] != path:
                        self.skipped_dirs.append((path, self.dirs[key]))
                    continue
                self.dirs[key] = path
                stack.append(path)
        return out

    def _first(self, path: str, folder: str, cls: str, where: str) -> bool:
        """Whether ``path`` is a file not seen before; a file claimed by another class or split is an error."""
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ConfigError(f"{where}: {path}: cannot read it ({exc.strerror or exc}); fix the link or remove the file") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: {path} is not a regular file; ImageFolder images must be plain files, remove it")
        key = _id(st)
        if key not in self.files:
            self.files[key] = (path, folder, cls)
            return True
        first, first_folder, first_cls = self.files[key]
        if first_folder != folder:
            raise ConfigError(
                f"{where}: {path} and {first} are the same file in two splits ({folder} and {first_folder}); "
                "a test image seen in training inflates the test score, keep each image in one split"
            )
        if first_cls != cls:
            raise ConfigError(
                f"{where}: {path} and {first} are the same file in classes {cls!r} and {first_cls!r}; "
                "give each image one class"
            )
        self.duplicates.append((path, first))
        return False

    def warn(self, where: str) -> None:
        """One warning per kind of path that was not counted (nothing when every path was a new file)."""
        if self.skipped_dirs:
            link, first = self.skipped_dirs[0]
            log.warning(f"stitchkit: note: {where}: {len(self.skipped_dirs)} directory link(s) lead to a folder walked already (e.g. {link} -> "
                        f"{first}: a symlink loop or a second path); their images are counted once")
        if self.duplicates:
            second, first = self.duplicates[0]
            log.warning(f"stitchkit: note: {where}: {len(self.duplicates)} image path(s) are a second name of a file counted already "
                        f"(e.g. {second} = {first}); each file is counted once")


class WalkedImageFolder(ImageFolder):
    """torchvision's ImageFolder over the samples a :class:`FolderWalk` found (nothing walked again)."""

    def __init__(self, root: str, walk: FolderWalk, where: str, **kw: Any) -> None:
        self._found = walk.samples(root, where)
        kw.setdefault("loader", load_image)
        super().__init__(root, **kw)

    def find_classes(self, directory: Any) -> tuple[list[str], dict[str, int]]:
        classes = self._found[0]
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(self, *args: Any, **kw: Any) -> list[tuple[str, int]]:  # type: ignore[override]
        return list(self._found[1])


def load_image(path: str) -> Any:
    """torchvision's loader, but a file that no longer reads (changed since :func:`check_images`) is named."""
    try:
        return default_loader(path)
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"data.root: {path} is not a readable image any more ({first}); it changed after the "
                          "check before training: restore or remove it, then resume") from None


def check_images(paths: Sequence[str], where: str, *, max_pixels: int = limits.MAX_IMAGE_PIXELS) -> None:
    """Open every image before training; a bad one is a one-line ConfigError naming it.

    PNG: ``verify()`` (every chunk's CRC, so truncation and damage show without
    decoding). Other formats, whose ``verify()`` checks little: decoded, at the
    smallest scale the format allows (JPEG: 1/8). Any image over ``max_pixels``
    (a decompression bomb: PIL's own limit is only a warning below 2x its
    default) is refused from its header, before a pixel is decoded.
    """
    from PIL import Image

    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels is below PIL's warning
                with Image.open(path) as im:
                    w, h = im.size
                    if w * h > max_pixels:
                        raise ConfigError(
                            f"{where}: {path} is {w}x{h} = {w * h:,} pixels, over {max_pixels:,} "
                            "(stitchkit.core.limits.MAX_IMAGE_PIXELS, the largest input a model can take); "
                            "a decompression bomb or a wrong file: remove it or scale it down"
                        )
                    if im.format == "PNG":
                        im.verify()
                    else:
                        im.draft(im.mode, (1, 1))
                        im.load()
        except ConfigError:
            raise
        except Image.DecompressionBombError as exc:  # beyond twice PIL's limit: refused by PIL's header check
            raise ConfigError(
                f"{where}: {path} is over {max_pixels:,} pixels (stitchkit.core.limits.MAX_IMAGE_PIXELS; PIL: {exc}); "
                "a decompression bomb or a wrong file: remove it or scale it down"
            ) from None
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{where}: {path} is not a readable image ({first}); remove or replace it") from None


def _class_dirs(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(os.path.join(folder, e.name) for e in entries if e.is_dir())
    except OSError as exc:
        raise ConfigError(f"data.root: cannot read {folder} ({exc.strerror or exc}); check the path") from None


def _id(st: os.stat_result) -> FileId:
    return (st.st_dev, st.st_ino)

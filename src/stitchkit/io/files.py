"""Safe file handling: every file stitchkit writes or reads from a user goes through here.

Why one module: the guarantees the CLI makes ("nothing lost, nothing hangs")
only hold if every writer and every reader follows the same rules:

- **atomic writes** (:func:`atomic_write`): a temp file next to the target,
  fsynced, then ``os.replace``; the old file survives any failure, the temp
  file is removed on error, and temp files left by a *killed* writer are swept
  on the next write into that directory (their names carry the writer's pid);
  new files get the permissions the umask allows (``0o666 & ~umask``), a
  rewritten file keeps its mode;
- **inputs are never destroyed** (:func:`refuse_overwrite`): an output that is,
  or resolves through a symlink or hard link to, an input is refused;
- **special files never block** (:func:`check_regular_file`): FIFOs, devices,
  sockets and directories are refused from ``stat`` before any ``open``;
- **one writer per output directory** (:class:`OutputLock`): an ``fcntl``
  lock the OS releases when the holder dies; a second writer fails at once,
  naming the directory and the holding process.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import pathlib
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from types import TracebackType

from ..core.errors import FileError

PathLike = str | os.PathLike[str]

#: ``.<target name>.<pid>-<8 hex>.tmp``: the pid lets a later run tell a dead writer's leftovers from a live one's.
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
LOCK_NAME = ".stitchkit.lock"


# --------------------------------------------------------------------------- reading
def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular_file(path: PathLike, what: str = "file") -> os.stat_result:
    """``stat`` ``path`` and refuse anything but a regular file, without opening it (a FIFO would block)."""
    p = pathlib.Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileError(f"{p}: {what} not found") from None
    except OSError as exc:
        raise FileError(f"{p}: cannot read the {what}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileError(f"{p}: is {_kind(st.st_mode)}, not a {what}; give the path of a regular file")
    return st


def open_regular(path: PathLike, what: str = "file") -> int:
    """An ``O_RDONLY`` descriptor of a regular file; refuses special files even if swapped in after ``stat``."""
    check_regular_file(path, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileError(f"{path}: is {_kind(st.st_mode)}, not a {what}; give the path of a regular file")
    return fd


def file_sha256(path: PathLike, what: str = "file", start: int = 0) -> str:
    """The sha256 of a regular file's bytes from ``start`` to the end, read 1 MiB at a time
    (checkpoint tensors, pool files: never whole into memory)."""
    digest = hashlib.sha256()
    with open(open_regular(path, what), "rb") as fh:
        fh.seek(start)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- outputs
def is_plain_file_name(name: str) -> bool:
    """A name that stays inside its directory: no separators, not ``.``/``..``, not hidden, at most 255 bytes."""
    return (
        bool(name) and name not in (".", "..") and not name.startswith(".")
        and not any(c in name for c in "/\\\0") and len(name.encode("utf-8", "surrogateescape")) <= 255
    )


def refuse_overwrite(output: PathLike, inputs: Iterable[PathLike], what: str = "output") -> None:
    """Refuse an ``output`` that is a directory, or is (or resolves to) one of ``inputs``.

    Same file means same ``(st_dev, st_ino)`` after following symlinks, so
    hard links and symlinks to an input are caught as well as the same name.
    """
    out = pathlib.Path(output)
    try:
        st = os.stat(out)
    except FileNotFoundError:
        return  # a new file (or a dangling symlink, which os.replace replaces itself) destroys nothing
    except OSError as exc:
        raise FileError(f"{out}: cannot check the {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileError(f"{out}: the {what} is a directory; give a file name, e.g. {out / 'model.safetensors'}")
    if not stat.S_ISREG(st.st_mode):
        raise FileError(f"{out}: the {what} is {_kind(st.st_mode)}; stitchkit writes regular files only, choose another path")
    for src in inputs:
        try:
            sst = os.stat(src)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (sst.st_dev, sst.st_ino):
            same = "is" if os.path.abspath(out) == os.path.abspath(src) else "resolves (symlink or hard link) to"
            raise FileError(f"{out}: refusing to write: the {what} {same} the input {src}; choose another output path")


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, not thread-safe)
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - non-Linux
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def sweep_temp_files(directory: PathLike) -> list[pathlib.Path]:
    """Remove temp files our atomic writes left in ``directory`` when their writer was killed."""
    removed: list[pathlib.Path] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if m and not _alive(int(m.group("pid"))):
            p = pathlib.Path(directory) / name
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def temp_path(target: PathLike) -> pathlib.Path:
    p = pathlib.Path(target)
    return p.parent / f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def atomic_write(path: PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Call ``write(temp_name)``, then move the temp file over ``path``: ``path`` is never half-written.

    On any failure the temp file is removed and ``path`` is left as it was; an
    OS error about the temp file is re-raised naming ``path``.
    """
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        # renaming over /dev/null (as root) or a FIFO would replace a special file with ours
        raise FileError(f"{p}: is {_kind(st.st_mode)}; stitchkit writes regular files only, choose another path")
    sweep_temp_files(p.parent)
    try:
        mode = stat.S_IMODE(os.stat(p).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    tmp = temp_path(p)
    try:
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and str(tmp) in (exc.filename, exc.filename2):
            # the user never named the temp file: report the path they gave
            raise OSError(exc.errno, exc.strerror, str(p)) from None
        raise
    return p


def write_bytes_atomic(path: PathLike, payload: bytes) -> pathlib.Path:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "xb") as fh:
            fh.write(payload)

    return atomic_write(path, write)


def write_text_atomic(path: PathLike, text: str) -> pathlib.Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def copy_atomic(src: PathLike, dst: PathLike) -> pathlib.Path:
    """Copy ``src`` to ``dst`` atomically (refusing a ``dst`` that is ``src``)."""
    refuse_overwrite(dst, [src])
    def write(tmp: str) -> None:
        shutil.copyfile(src, tmp)

    return atomic_write(dst, write)


# --------------------------------------------------------------------------- the output-directory lock
class OutputLock:
    """An exclusive, non-blocking lock on an output directory (``<dir>/.stitchkit.lock``).

    Held for the life of a build or demo. It is an ``fcntl.flock``, so the OS
    releases it when the holding process exits or is killed; the file keeps
    the holder's pid only to name it in the error.
    """

    def __init__(self, directory: PathLike, what: str = "stitchkit") -> None:
        self.directory = pathlib.Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        import fcntl  # local: POSIX only; the rest of this module works anywhere

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise FileError(
                    f"{self.directory}: output directory is in use by another stitchkit process ({holder}); "
                    "wait for it to finish or choose another output directory"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {self.what}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


# --------------------------------------------------------------------------- OS errors, one line
_HINTS = {
    errno.EACCES: "check the permissions, or choose another location",
    errno.EPERM: "check the permissions, or choose another location",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free space or choose another location",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another location",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EISDIR: "it is a directory; give a file name",
    errno.EEXIST: "it already exists and is in the way; remove it or choose another path",
    errno.EXDEV: "source and destination are on different file systems; write within one",
    errno.EIO: "the device reported an I/O error; check the disk",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.ELOOP: "too many symbolic links; fix the path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OS error: the path(s), what failed, what to do."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    what = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or -1, "check the path and try again")
    return f"{where + ': ' if where else ''}{what}; {hint}"

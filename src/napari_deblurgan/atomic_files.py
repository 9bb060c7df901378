"""Atomic file writes: a file at its final path is always complete (never half written).

Every writer in the package (model files, checkpoints, CLI outputs, CSV tables, demo results) goes through
:func:`atomic_write`: write a temporary file in the destination folder, then ``os.replace`` it onto the
target (atomic within one filesystem). No torch here.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import DeblurGANError, InputError


class WriteFailed(InputError, OSError):
    """A file could not be written where asked (disk full, read-only, no permission, the folder gone). The
    message names the file, the cause in words and what to do; :attr:`reason` is the cause alone ("no space left
    on device"), :attr:`target` the file. An :class:`InputError` (the CLI prints it without a traceback) and an
    ``OSError`` (code that catches failed writes as OSError still does)."""

    def __init__(self, message: str, target: Path, reason: str, code: int | None = None) -> None:
        super().__init__(message)
        self.target = target
        self.reason = reason
        self.errno = code  # type: ignore[misc]  # OSError's field: ENOSPC etc., None where not known


#: The causes of a failed write that the user can act on, in words, and what to do about each. ``strerror``
#: is not used: a read-only file system has been reported as "(no permission)", and torch and tifffile report
#: a full disk as "unexpected pos 704 vs 598" or "9216 requested and 6008 written".
WRITE_FAILURES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space there or choose another location"),
    errno.EDQUOT: ("disk quota exceeded", "free some of your quota or choose another location"),
    errno.EROFS: ("read-only file system", "choose a location on a writable disk"),
    errno.EACCES: ("permission denied", "choose a folder you may write to"),
    errno.EPERM: ("operation not permitted", "choose a folder you may write to"),
    errno.EFBIG: ("file too large for this file system", "choose a location on another disk"),
}

#: Below this much free space a write that failed without saying why (torch's RuntimeError, tifffile's short
#: write) failed because the disk is full: a write that runs out of space fills it to the last block.
LOW_SPACE_BYTES = 1 << 20


def write_failure(exc: BaseException, path: Path) -> WriteFailed | None:
    """The :class:`WriteFailed` that says why writing ``path`` raised ``exc``, or None when ``exc`` is no failure
    to write (a bug, a bad value, a failed read of an input: passed on as it is). Call it before the partly
    written temporary file is removed: the free space it took is how a full disk is recognised."""
    if isinstance(exc, DeblurGANError) or not isinstance(exc, (OSError, RuntimeError)):
        return None
    directory = path.parent if str(path.parent) else Path(".")
    failure: tuple[str, str] | None = None
    code: int | None = None
    for seen in _causes(exc):
        if isinstance(seen, OSError) and not _names_the_output(seen, path):
            return None  # another file's error (an input page read as the output is written): as it is
        code = getattr(seen, "errno", None) if isinstance(seen, OSError) else None
        failure = WRITE_FAILURES.get(code) if code is not None else None
        if failure is not None:
            break
    if failure is None and not directory.is_dir():
        failure = (
            "its folder no longer exists",
            "the folder was removed or unmounted: create it again or choose another location",
        )
        code = errno.ENOENT
    if failure is None and _says_a_write_fell_short(exc):
        with contextlib.suppress(OSError):
            if shutil.disk_usage(directory).free < LOW_SPACE_BYTES:
                failure, code = WRITE_FAILURES[errno.ENOSPC], errno.ENOSPC
    if failure is None:
        return None
    reason, advice = failure
    return WriteFailed(
        f"Cannot write {str(path)!r}: {reason}; {advice} (any earlier file there is unchanged).", path, reason, code
    )


def _names_the_output(error: OSError, path: Path) -> bool:
    """Whether an OSError may be the output's: it names no file, or ``path`` or one of its temporary files
    (``atomic_write``'s ``.<name>.*.part``). An error naming another file (an input that cannot be read) is no
    failure to write ``path``."""
    for name in (error.filename, error.filename2):
        if name is None or isinstance(name, int):
            continue
        other = Path(os.fsdecode(name))
        if other.name != path.name and not other.name.startswith(f".{path.name}."):
            return False
    return True


#: How a writer says that a write fell short without an errno: torch's zip writer ("unexpected pos 704 vs
#: 598"), tifffile/NumPy's short writes ("9216 requested and 6008 written"), and messages that say "write".
_SHORT_WRITE = re.compile(r"unexpected pos|requested and \d+ written|writ", re.IGNORECASE)


def _says_a_write_fell_short(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) reads as a write that fell short: only then does a nearly full disk
    explain it (a CUDA error or a failed decode while the disk happens to be nearly full is passed on)."""
    return any(isinstance(seen, (OSError, RuntimeError)) and _SHORT_WRITE.search(str(seen)) for seen in _causes(exc))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, nearest first: torch's RuntimeError holds the OSError that caused it (a few
    links at most, so the walk stops after 8)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def _umask() -> int:
    """The process umask, without changing it where the OS can tell (Linux); ``os.umask`` round trip elsewhere."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str]) -> Path:
    """``path`` if a file can be written there: its folder exists and is writable and ``path`` is no folder.

    Writers call it before the work (a deblur, a training run) so that a bad output location is one clear
    InputError up front, not a failure after the work is done. A symbolic link is checked as the file it points to,
    which :func:`atomic_write` writes, but ``path`` is returned as given: what the user named (a model listed
    under the link's name, a checkpoint folder named after it) stays the link, whatever it points to.
    """
    given = Path(path)
    target = _write_target(given)
    # a link's errors name both: the path the user gave, and the file it leads to that is the problem
    shown = repr(str(given)) if target == given else f"{str(given)!r} -> {str(target)!r}"
    via = "" if target == given else f" ({shown})"
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise WriteFailed(
            f"Output directory {str(directory)!r} does not exist{via}; create it first.",
            given,
            "its folder does not exist",
            errno.ENOENT,
        )
    if target.is_dir():
        raise WriteFailed(
            f"{shown} is a directory; give a file name inside it.", given, "it is a directory", errno.EISDIR
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise WriteFailed(
            f"Cannot write into {str(directory)!r} (no permission){via}; choose another folder.",
            given,
            "no permission to write into its folder",
            errno.EACCES,
        )
    return given


def _write_target(path: Path) -> Path:
    """The file that writing ``path`` writes: ``path``, or for a symbolic link the file it leads to (through a
    chain of links; for a dangling link the file it names, which the write creates). A link that leads back to
    itself is a :class:`WriteFailed`, as ``open(path, "w")`` fails on it (replacing it would destroy the links)."""
    if not os.path.islink(path):
        return path
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:  # a dangling link: written through, it creates the file it names
        return Path(os.path.realpath(path))
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # e.g. no permission to look into a folder on the way: said by the checks
            return Path(os.path.realpath(path))
        raise WriteFailed(
            f"Cannot write {str(path)!r}: too many levels of symbolic links (the link leads back to itself); fix "
            "or remove the link, or choose another name.",
            path,
            "too many levels of symbolic links",
            errno.ELOOP,
        ) from None


#: A temporary file older than this is a killed write's leftover, not a write in progress (in this or
#: another process: two runs given one checkpoint folder must not break each other's saves).
STALE_PART_SECONDS = 3600


def remove_stale_parts(path: Path) -> None:
    """Remove the temporary files that writes of ``path`` killed mid-way (kill -9, power loss) left behind,
    once they are old: each can be as large as the file itself, and nothing else would ever remove them."""
    now = time.time()
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > STALE_PART_SECONDS:
                stale.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Context manager yielding a temporary path next to ``path``; renamed onto ``path`` on success.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left
    untouched. A failure to write, sync or rename that the user can act on (disk full, quota, read-only, no
    permission, the folder gone) is raised as :class:`WriteFailed`, which says so in words (:func:`write_failure`).
    The caller writes (and should fsync) the temporary file. The file gets the permissions a plain
    ``open(path, "w")`` would give (a replaced file keeps its own), not the temporary file's owner-only 0600.
    A symbolic link is written through, as ``open(path, "w")`` does: the file it points to is replaced (its
    temporary file in that file's folder, so the rename stays atomic) and the link is kept.
    """
    # a symlink resolved: os.replace onto the link itself would replace the link with a plain file, and the file
    # it names (e.g. a model kept under a stable name) would keep its old contents
    path = _write_target(check_writable(path))
    directory = path.parent if str(path.parent) else Path(".")
    remove_stale_parts(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        failed = write_failure(exc, path)
        if failed is not None:
            raise failed from None
        raise WriteFailed(
            f"Cannot write {str(path)!r}: {exc.strerror or exc}; choose another location.",
            path,
            str(exc.strerror or exc),
            exc.errno,
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:  # a new file
            mode = 0o666 & ~_umask()
        with contextlib.suppress(OSError):
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        failed = write_failure(exc, path)  # before the unlink: a full disk is seen by its free space
        with contextlib.suppress(OSError):
            tmp.unlink()
        if failed is not None:
            raise failed from exc
        raise
    # Make the rename itself durable (best effort: not every platform can fsync a directory).
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

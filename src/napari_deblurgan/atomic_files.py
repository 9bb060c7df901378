"""Atomic file writes: a file at its final path is always complete (never half written).

Every writer in the package (model files, checkpoints, CLI outputs, CSV tables, demo results) goes through
:func:`atomic_write`: write a temporary file in the destination folder, then ``os.replace`` it onto the
target (atomic within one filesystem). No torch here.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


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
    InputError up front, not a failure after the work is done.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"Output directory {str(directory)!r} does not exist; create it first.")
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a directory; give a file name inside it.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write into {str(directory)!r} (no permission); choose another folder.")
    return path


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
    untouched. The caller writes (and should fsync) the temporary file. The file gets the permissions a plain
    ``open(path, "w")`` would give (a replaced file keeps its own), not the temporary file's owner-only 0600.
    """
    path = check_writable(path)
    directory = path.parent if str(path.parent) else Path(".")
    remove_stale_parts(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise InputError(f"Cannot write {str(path)!r}: {exc.strerror or exc}; choose another location.") from None
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
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # Make the rename itself durable (best effort: not every platform can fsync a directory).
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

"""Atomic file writes: a file at its final path is always complete (never half written).

Every writer in the package (model files, checkpoints, CLI outputs, CSV tables, demo results) goes through
:func:`atomic_write`: write a temporary file in the destination folder, then ``os.replace`` it onto the
target (atomic within one filesystem). No torch here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Context manager yielding a temporary path next to ``path``; renamed onto ``path`` on success.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left
    untouched. The caller writes (and should fsync) the temporary file.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"Output directory {str(directory)!r} does not exist; create it first.")
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a directory; give a file name inside it (e.g. {str(path / 'model.pt')!r}).")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
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

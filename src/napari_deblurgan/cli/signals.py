"""Signals that end a command the way Ctrl-C does: SIGTERM (a cluster's time limit, ``kill``) and SIGHUP (the
terminal or SSH session closed).

Python's default for both is to die on the spot, skipping every ``finally`` and ``except``: a command killed
mid-write left its hidden temporary ``.NAME.*.part`` file (as large as the output) next to the output, and
printed nothing. Under :func:`terminate_like_ctrl_c` they raise :class:`Terminated` in the main thread
instead, a :class:`KeyboardInterrupt`, so every clean-up written for Ctrl-C runs for them too
(``atomic_write`` removes its temporary file); the command then reports and exits with 128 + the signal's
number (143 for SIGTERM, 129 for SIGHUP), as a shell reports a process killed by it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

#: The signals handled, where the platform has them (Windows has no SIGHUP).
TERMINATING_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C; :attr:`exit_status` is 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM``."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def terminate_like_ctrl_c(signums: tuple[int, ...] = TERMINATING_SIGNALS) -> Iterator[None]:
    """Within the block, ``signums`` raise :class:`Terminated` in the main thread; the previous handlers are
    restored on exit. Only the first signal raises: one arriving while the clean-up runs is ignored, so that it
    cannot cut the clean-up short. Outside the main thread (where handlers cannot be set) it does nothing."""
    raised: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not raised:
            raised.append(signum)
            if signum == getattr(signal, "SIGHUP", None):
                detach_from_terminal()
            raise Terminated(signum)

    with handling(signums, handler):
        yield


@contextlib.contextmanager
def handling(signums: Iterable[int], handler: Any) -> Iterator[None]:
    """Within the block, ``handler`` handles ``signums`` (those not ignored: :func:`handled_signals`); the
    previous handlers are put back on exit. Outside the main thread, where handlers cannot be set, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in handled_signals(signums)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)  # None: set outside Python


def handled_signals(signums: Iterable[int]) -> list[int]:
    """The ``signums`` whose handler a command may take over: not those ignored (``SIG_IGN``), which is how
    ``nohup`` asks a program to outlive its terminal (and a shell's ``cmd &`` to ignore Ctrl-C)."""
    return [signum for signum in signums if signal.getsignal(signum) is not signal.SIG_IGN]


def detach_from_terminal(streams: Iterable[Any] | None = None) -> None:
    """After SIGHUP the terminal is gone and every write to it fails (EIO): point the streams that were on it at
    /dev/null, so that the clean-up and its last messages run to the end (and the exit status is the signal's,
    not an error's). Streams on a file or a pipe (a log) are left as they are. Default: stdout and stderr."""
    for stream in (sys.stdout, sys.stderr) if streams is None else streams:
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a replaced stream (tests, IDEs) has no descriptor
            continue
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)

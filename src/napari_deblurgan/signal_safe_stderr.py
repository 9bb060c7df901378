"""Lines that a signal handler has to say, written to ``sys.stderr`` from a thread instead of the handler.

Used by the trainer's Ctrl-C handler (``finetune()`` in a console or Jupyter) and the CLI's stop handlers: both
want to say at once that a run will stop, and neither may write to a stream from inside the handler.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading


class SignalSafeStderr:
    """Lines that a signal handler has to say, written to ``sys.stderr`` by a daemon thread.

    A Python signal handler runs in the main thread between two bytecodes of whatever it interrupted, possibly in
    the middle of a write to the same stream (a progress line from ``on_event``; in a terminal a re-entrant write
    to a BufferedWriter raises RuntimeError, and another stream's lock, such as Jupyter's, may be held by the very
    code the handler interrupted). So the handler only puts the line on a :class:`queue.SimpleQueue`, whose
    ``put`` is documented re-entrant, and this thread writes it as soon as it gets the GIL: at once, not when the
    step ends. ``sys.stderr`` is looked up at each write, so it is Jupyter's or napari's console stream, or
    pytest's capture, whichever is in place then. The thread is started from ordinary code (:meth:`ready`, when
    a handler is installed), never from a handler.
    """

    def __init__(self) -> None:
        self._lines: queue.SimpleQueue[str | threading.Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def ready(self) -> None:
        """Start the writing thread if it is not running (once per process; again in a forked child)."""
        if self._thread is not None and self._thread.is_alive():
            return
        # Not `with lock:`, which waits: the trainer calls this before each event of a run, with Python's own
        # SIGINT handler in place, and a Ctrl-C raised on a with statement's line can leave its lock held
        # (CPython, bpo-29988), so every later event would hang. A lock held means another thread is starting the
        # writer - or that a Ctrl-C landed between acquire() and the `try:` below (3.11 runs handlers after any
        # call) and left it held for good, with no writer. Not knowing which, a writer is started anyway: two on
        # one queue write each line once, and with none every line queued from then on would be lost.
        if not self._start_lock.acquire(blocking=False):
            self._start()
            return
        try:
            if self._thread is None or not self._thread.is_alive():
                self._start()
        finally:
            self._start_lock.release()

    def _start(self) -> None:
        thread = threading.Thread(target=self._write, name="napari-deblurgan Ctrl-C", daemon=True)
        thread.start()
        self._thread = thread

    def say(self, line: str) -> None:
        """Queue one line; safe inside a signal handler."""
        self._lines.put(line)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued so far is written (tests); False after ``timeout`` seconds."""
        done = threading.Event()
        self._lines.put(done)
        return done.wait(timeout)

    def _write(self) -> None:
        while True:
            line = self._lines.get()
            if isinstance(line, threading.Event):
                line.set()
                continue
            with contextlib.suppress(Exception):  # a closed or detached stream: the stop itself still happens
                stream = sys.stderr
                stream.write(line + "\n")
                stream.flush()


#: The one writer of the process (one thread, started on first use).
stderr_from_signal_handlers = SignalSafeStderr()

"""SignalSafeStderr, the writer of the lines a Ctrl-C handler has to say: no interrupt may leave it unable to
write (tests/test_training.py has the trainer's side)."""

from __future__ import annotations

import io
import sys
import threading

import pytest

from napari_deblurgan.signal_safe_stderr import SignalSafeStderr


class _InterruptedAfterAcquire:
    """A start lock whose first acquire() takes the lock and then raises KeyboardInterrupt, as a Ctrl-C does on
    CPython 3.11, which runs signal handlers after any call returns: after acquire(), before the ``try:``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first = True

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self.lock.acquire(blocking, timeout)
        if self.first:
            self.first = False
            raise KeyboardInterrupt
        return got

    def release(self) -> None:
        self.lock.release()


def test_a_ctrl_c_right_after_the_start_lock_is_taken_does_not_silence_every_later_line(monkeypatch):
    """The lock stays held for good with no writer started: ready() starts one anyway, or every line said from
    then on (the stop of a run) would wait in the queue unwritten."""
    writer = SignalSafeStderr()
    writer._start_lock = _InterruptedAfterAcquire()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        writer.ready()
    assert writer._start_lock.lock.locked()  # left held, as the interrupt leaves it
    writer.ready()
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    writer.say("napari-deblurgan: Ctrl-C: training stops after this step")
    assert writer.flush(timeout=5)
    assert stream.getvalue() == "napari-deblurgan: Ctrl-C: training stops after this step\n"


def test_ready_starts_one_writer_and_keeps_it(monkeypatch):
    writer = SignalSafeStderr()
    writer.ready()
    first = writer._thread
    writer.ready()
    assert writer._thread is first and first is not None and first.is_alive()
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    for n in range(3):
        writer.say(f"line {n}")
    assert writer.flush()
    assert stream.getvalue() == "line 0\nline 1\nline 2\n"  # each once, in order

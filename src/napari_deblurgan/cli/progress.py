"""A small text progress bar for the command line (stderr, no third-party dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: The progress display whose line is drawn on a terminal and not yet ended (a bar redrawn in place with "\r"),
#: and its stream, so that a warning or note printed meanwhile starts on a line of its own
#: (:func:`end_progress_line`).
_open_line: tuple[object, TextIO] | None = None


def line_drawn(owner: object, stream: TextIO) -> None:
    """``owner`` has drawn a line on the terminal ``stream`` that it has not ended yet."""
    global _open_line
    _open_line = (owner, stream)


def line_ended(owner: object) -> bool:
    """``owner`` ends its line: True if it still has to write the newline (nobody ended it meanwhile)."""
    global _open_line
    if _open_line is not None and _open_line[0] is owner:
        _open_line = None
        return True
    return False


def end_progress_line() -> None:
    """End a progress line drawn on a terminal, if one is open, so that what follows starts on a fresh line."""
    global _open_line
    if _open_line is not None:
        stream = _open_line[1]
        _open_line = None
        stream.write("\n")
        stream.flush()


class ProgressBar:
    """Callable ``progress(done, total)`` that draws ``label [#####-----]  42% 21/50 0:03 elapsed``.

    On a terminal the bar is redrawn in place (at most ``1 / min_interval`` times a second); when stderr is
    redirected to a file it prints a line at every 10 % so logs stay short. ``close()`` finishes the line;
    a closed bar called again starts afresh (its elapsed time counted from the close, its 10 % steps from 0), as
    a new bar would: one bar can show several jobs one after the other.
    """

    def __init__(
        self,
        label: str = "",
        *,
        stream: TextIO | None = None,
        width: int = 30,
        min_interval: float = 0.1,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.enabled = enabled
        self._start = time.monotonic()
        self._last_draw = -float("inf")
        self._last_decile = -1
        self._drawn = False
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        done = max(0, min(done, total))
        now = time.monotonic()
        if self._tty:
            if done < total and now - self._last_draw < self.min_interval:
                return
            self.stream.write("\r" + self.render(done, total))
            line_drawn(self, self.stream)
        else:
            decile = (10 * done) // total
            if decile == self._last_decile:
                return
            self._last_decile = decile
            self.stream.write(self.render(done, total) + "\n")
        self.stream.flush()
        self._last_draw = now
        self._drawn = True

    def render(self, done: int, total: int) -> str:
        """The bar as text (without carriage return or newline)."""
        frac = done / total if total else 1.0
        filled = round(frac * self.width)
        elapsed = int(time.monotonic() - self._start)
        bar = "#" * filled + "-" * (self.width - filled)
        prefix = f"{self.label} " if self.label else ""
        return f"{prefix}[{bar}] {frac:4.0%} {done}/{total} {elapsed // 60}:{elapsed % 60:02d} elapsed"

    def close(self) -> None:
        """End the progress line (on a terminal) so later output starts on a fresh line; the next call starts
        a new bar, timed from now."""
        if line_ended(self) and self.enabled and self._drawn and self._tty:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
        self._start = time.monotonic()
        self._last_draw = -float("inf")
        self._last_decile = -1

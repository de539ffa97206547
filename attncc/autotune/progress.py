"""A dependency-free progress bar on stderr (data goes to stdout, so the two never mix)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``label [#####-----] done/total suffix`` redrawn in place on a terminal, as lines otherwise.

    A no-op when disabled.
    """

    WIDTH = 24

    def __init__(self, label: str, total: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(0, total)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width_drawn = 0
        self._drawn: tuple[int, str] | None = None
        self._suffix = ""
        self._last_tenth = -1

    def update(self, done: int | None = None, suffix: str = "", *, force: bool = False) -> None:
        """Advance to ``done`` (or by one) and redraw at most ten times a second on a terminal."""
        self.done = self.done + 1 if done is None else done
        self._suffix = suffix
        if not self.enabled:
            return
        now = time.monotonic()
        finished = bool(self.total) and self.done >= self.total
        if not (force or finished or self._due(now)):
            return
        self._last_draw = now
        self._draw(suffix)

    def _due(self, now: float) -> bool:
        """Terminal: ten redraws a second at most.  Log files: every 10% or every 15 seconds."""
        if self._tty:
            return now - self._last_draw >= 0.1
        tenth = 10 * self.done // max(self.total, 1)
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            return True
        return now - self._last_draw >= 15.0

    def _draw(self, suffix: str) -> None:
        if self._drawn == (self.done, suffix):
            return
        self._drawn = (self.done, suffix)
        total = max(self.total, 1)
        filled = min(self.WIDTH, self.WIDTH * self.done // total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"{self.label} [{bar}] {self.done}/{self.total} {suffix}".rstrip()
        if self._tty:
            pad = " " * max(0, self._width_drawn - len(line))
            self.stream.write(f"\r{line}{pad}")
            self._width_drawn = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, suffix: str | None = None) -> None:
        """Draw the final state (with the last suffix unless given) and end the line."""
        if not self.enabled:
            return
        self._draw(self._suffix if suffix is None else suffix)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()

"""A progress bar on stderr for long work, shown only when stderr is a terminal (or forced)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Byte-based progress over a known total, redrawn at most every 0.2 s."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, done: int, extra: str = "") -> None:
        """Record progress; redraws if enough time passed."""
        self.done = done
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.2:
            self._last = now
            self._draw(extra)

    def _draw(self, extra: str) -> None:
        frac = min(self.done / self.total, 1.0)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = time.monotonic() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        self.stream.write(f"\r{self.label[:30]:30} [{bar}] {frac:6.1%} {extra} eta {eta:4.0f}s ")
        self.stream.flush()

    def close(self) -> None:
        """Clear the line."""
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()

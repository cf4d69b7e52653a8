"""The command line's progress bar (``shopstream replay`` / ``run`` / ``demo``): the producer only
reports how far it is (engine/producer.py replay(progress=...)); drawing on a terminal is here."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int | None, label: str, stream=None):
        # sys.stderr as it is now, not as it was at import (a test's captured stream, closed since)
        stream = sys.stderr if stream is None else stream
        self.total, self.label, self.stream = total, label, stream
        self.enabled = stream.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {done:,}/{self.total:,} {rate:,.0f}/s ")
        else:
            self.stream.write(f"\r{self.label} {done:,} {rate:,.0f}/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

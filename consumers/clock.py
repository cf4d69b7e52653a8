"""Time for the consumer, injected: the wall clock (watermarks, dead-letter stamps, detection
latency), a monotonic clock (leases, idle timers, rates) and sleeping.

``SystemClock`` is the default; ``ManualClock`` is a clock a test moves by hand (bytewax's
``SystemClock`` / ``TestingClock``), so no test patches ``time``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def wall_us(self) -> int:
        """Wall-clock time, epoch microseconds."""

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back (differences only)."""

    async def sleep(self, seconds: float) -> None:
        """Wait this long (other tasks run meanwhile)."""


class SystemClock:
    def wall_us(self) -> int:
        return time.time_ns() // 1000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told: ``advance(s)``, or by ``sleep(s)`` (which then yields once)."""

    def __init__(self, wall_us: int = 1_793_520_000_000_000, monotonic: float = 1000.0):
        self._wall_us, self._monotonic = wall_us, monotonic

    def wall_us(self) -> int:
        return self._wall_us

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall_us += round(seconds * 1e6)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)

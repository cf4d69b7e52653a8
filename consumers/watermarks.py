"""Watermark advances the consumer makes itself: the idle advance (live mode: a partition
without input for ``idle_timeout_ms`` follows the wall clock) and the continuation of a close
that was bounded (``close_per_call``), call by call, until nothing is due."""

from __future__ import annotations

from typing import Any, Callable

from shopstream.engine.control import advance
from shopstream.engine.keys import Partition
from shopstream.engine.scripts import NotOwner, Scripts
from shopstream.engine.settings import Settings

from .clock import Clock
from .leases import Leases
from .recorder import Recorder


class WatermarkAdvancer:
    def __init__(self, client: Any, scripts: Scripts, settings: Settings, parts: list[Partition], name: str,
                 rules: Callable[[], bytes], leases: Leases, recorder: Recorder, clock: Clock, enabled: bool):
        self.client, self.scripts, self.settings, self.parts, self.name = client, scripts, settings, parts, name
        self.rules, self.leases, self.recorder, self.clock = rules, leases, recorder, clock
        self.enabled = enabled                       # the idle advance (live mode); advance_to always works
        self.last_input: dict[int, float] = {}       # partition -> monotonic time of its last read
        self.last_idle_tick: dict[int, float] = {}
        self.has_data: set[int] = set()              # partitions we applied clicks to

    def saw_input(self, p: int) -> None:
        self.last_input[p] = self.clock.monotonic()

    def saw_data(self, p: int) -> None:
        self.has_data.add(p)

    async def advance_idle(self, owned: list[int]) -> None:
        """Live mode: a partition without input for idle_timeout follows the wall clock."""
        if not self.enabled:
            return
        s = self.settings
        now = self.clock.monotonic()
        idle = s.idle_timeout_ms / 1000
        for p in owned:
            if p not in self.has_data:
                continue
            last = self.last_input.setdefault(p, now)
            if now - last < idle or now - self.last_idle_tick.get(p, 0.0) < s.heartbeat_ms / 1000:
                continue
            self.last_idle_tick[p] = now
            await self.advance_to(p, self.clock.wall_us() - (s.idle_timeout_ms + s.out_of_order_ms) * 1000)

    async def advance_to(self, p: int, target_us: int) -> None:
        """Move partition p's watermark to at least target_us and close what is due, in bounded calls."""
        try:
            done = await advance(self.client, self.scripts, self.parts[p], self.settings, target_us,
                                 self.rules(), self.name)
        except NotOwner:
            self.leases.lose(p)
            return
        self.recorder.advanced(p, done)

"""Partition ownership: membership heartbeats and per-partition leases kept in Redis.

A consumer heartbeats into ``<ns>:consumers`` (ZSET, score = expiry ms); every member
computes the same assignment from the live members (engine/assignment.py).  Owning partition
p means holding ``<ns>:{p}:lease`` (renewed every heartbeat, expiring ``lease_ttl_ms`` after
a consumer dies).  The apply script checks the lease, so a consumer that lost it cannot
change the partition (fencing).  A new owner first claims every entry left pending by
earlier owners (XAUTOCLAIM) and applies those before reading new entries.

``Leases`` changes its state only through its own methods: the consumer reads ``owned`` and
``recovering`` (read-only views) and says what happened (``lose``, ``recovered``, ``mark_recovering``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from shopstream.engine.assignment import assigned
from shopstream.engine.connection import UNAVAILABLE, unavailable
from shopstream.engine.contract import LeaseArgs, ReleaseArgs
from shopstream.engine.keys import Keys
from shopstream.engine.scripts import Scripts
from shopstream.engine.settings import Settings

from .clock import Clock, SystemClock

log = logging.getLogger("shopstream.leases")


class Leases:
    def __init__(self, client: Any, scripts: Scripts, settings: Settings, name: str,
                 on_drop: Callable[[int], None] = lambda p: None, clock: Clock | None = None):
        self.client, self.scripts, self.settings, self.name = client, scripts, settings, name
        self.on_drop = on_drop              # called with a partition we no longer own (lost or released)
        self.clock = clock or SystemClock()
        self.keys = Keys(settings.namespace, settings.partitions)
        self._owned: set[int] = set()
        self._to_release: set[int] = set()
        self._recovering: set[int] = set()   # read own pending entries ("0") before new ones (">")
        self.members: list[str] = []
        self.valid_until: dict[int, float] = {}   # partition -> monotonic time our lease surely still holds

    # -- what we hold (read-only views) -------------------------------------------------------
    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    @property
    def recovering(self) -> frozenset[int]:
        """Owned partitions to read from our pending entries ("0") before new ones (">")."""
        return frozenset(self._recovering)

    def owns(self, p: int) -> bool:
        return p in self._owned

    # -- what the consumer tells us ----------------------------------------------------------
    def mark_recovering(self, p: int) -> None:
        """Partition p's next read is of our pending entries (an apply failed, to be retried)."""
        if p in self._owned:
            self._recovering.add(p)

    def mark_owned_recovering(self) -> None:
        """Every owned partition reads its pending entries first (Redis was unavailable: a read or
        an apply may have been lost on the way)."""
        self._recovering |= self._owned

    def recovered(self, p: int) -> None:
        """Partition p has nothing pending for us any more: read new entries."""
        self._recovering.discard(p)

    def lose(self, p: int) -> None:
        """We do not own partition p any more (lost, released, or the apply script said so)."""
        self._owned.discard(p)
        self._recovering.discard(p)
        self.valid_until.pop(p, None)
        self.on_drop(p)

    async def release_due(self) -> None:
        """Release the partitions the last heartbeat found assigned to others."""
        if self._to_release:
            await self.release(set(self._to_release))

    def readable(self, margin_s: float) -> list[int]:
        """Owned partitions whose lease is sure to hold for margin_s more (local clock: the lease was
        set at most ttl before it expires on the server).  A consumer that stalled past its lease
        (a GC pause, a failover) must not read a partition another consumer may own now: the
        entries it read would wait in its pending list and be applied later, out of order."""
        now = self.clock.monotonic()
        return sorted(p for p in self._owned - self._to_release if self.valid_until.get(p, 0.0) > now + margin_s)

    async def heartbeat(self) -> None:
        """Renew membership and leases; take free partitions assigned to us; mark the others to release.

        On a Redis Cluster one shard failing over must not cost the leases kept on the others: the
        membership keeps its last view while its own shard does not answer, and each lease is
        renewed on its own (the error is raised once the others are renewed)."""
        s = self.settings
        now_ms = self.clock.wall_us() // 1000
        away: Exception | None = None       # the error of a shard that did not answer, raised at the end
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(self.keys.consumers, {self.name: now_ms + s.lease_ttl_ms})
            pipe.zremrangebyscore(self.keys.consumers, "-inf", now_ms)
            pipe.zrange(self.keys.consumers, 0, -1)
            members = [m.decode() for m in (await pipe.execute())[2]]
        except (*UNAVAILABLE, RuntimeError) as exc:
            if not unavailable(exc) or not self.members:
                raise                        # (no view of the group yet: take nothing)
            away, members = exc, self.members
        if members != self.members:
            log.info("members now %d: %s", len(members), ", ".join(members))
            self.members = members
        want = assigned(members, self.name, s.partitions)
        self._to_release = self._owned - want
        for p in sorted(want | self._owned):
            if p in self._to_release:
                continue
            part = self.keys.partition(p)
            try:
                sent = self.clock.monotonic()
                held = await self.scripts.run("claim_lease", part, LeaseArgs(consumer=self.name, ttl_ms=s.lease_ttl_ms))
                if held:
                    self.valid_until[p] = sent + s.lease_ttl_ms / 1000
                if held and p not in self._owned:
                    await self.claim_pending(p)
                    self._owned.add(p)
                    log.info("took partition %d", p)
            except (*UNAVAILABLE, RuntimeError) as exc:
                if not unavailable(exc):
                    raise
                away = exc
                continue
            if not held and p in self._owned:
                self.lose(p)
                log.warning("lost partition %d (lease taken by another consumer)", p)
        if away is not None:
            raise away

    async def claim_pending(self, p: int, min_idle_ms: int = 0) -> int:
        """Move entries of partition p pending for other consumers to us; returns how many."""
        moved = 0
        for stream in self.keys.partition(p).inputs:
            cursor = "0-0"
            while True:
                reply = await self.client.xautoclaim(stream, self.settings.group, self.name, min_idle_ms,
                                                     start_id=cursor, count=1000)
                cursor = reply[0]
                moved += len(reply[1])
                if cursor in (b"0-0", "0-0"):
                    break
        self._recovering.add(p)
        if moved:
            log.info("partition %d: claimed %d pending entries", p, moved)
        return moved

    async def release(self, partitions: set[int]) -> None:
        for p in sorted(partitions):
            await self.scripts.run("release_lease", self.keys.partition(p), ReleaseArgs(consumer=self.name))
            self.lose(p)
            log.info("released partition %d", p)
        self._to_release -= partitions

    async def leave(self) -> None:
        await self.release(set(self._owned))
        await self.client.zrem(self.keys.consumers, self.name)

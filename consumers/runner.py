"""Running a consumer: the process (client, /metrics, signals, uvloop, an optional profile) and
its lifecycle (join the group, the heartbeat task, the apply loop until stopped or drained, leave).

The heartbeat task renews membership and leases every ``heartbeat_ms``; every few beats it also
claims entries stuck in other consumers' pending lists, trims the owned partitions' acknowledged
input, and always refreshes the lag gauges and the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from shopstream.engine import aio
from shopstream.engine.connection import (UNAVAILABLE, async_client, consumer_name, retry_until_available,
                                          unavailable)
from shopstream.engine.control import drained, ensure_groups, input_open
from shopstream.engine.retention import trim_inputs
from shopstream.engine.settings import Settings

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger("shopstream.consumer")
process_log = logging.getLogger("shopstream")       # the process's own lines, as before the split

STRAY_CLAIM_EVERY = 10      # heartbeats between sweeps for entries stuck in other consumers' lists
TRIM_EVERY = 5              # heartbeats between trims of the owned partitions' acknowledged input
RECOVER_PAUSE_S = 0.5          # after Redis went away mid-step: then our pending entries first (not a plain retry)


class Runner:
    def __init__(self, consumer: Consumer):
        self.c = consumer
        self.closing = False

    async def run(self) -> None:
        c = self.c
        async def join() -> None:         # e.g. a cluster failing over as we start: join when it is back
            await ensure_groups(c.client, c.settings)
            await c.catalog.refresh(c.client)
            await c.leases.heartbeat()
        if not await retry_until_available(join, "joining", c.stopping):    # redis-py Retry, backoff
            return
        beat = asyncio.create_task(self.heartbeat_loop())
        try:
            while not c.stopping.is_set():
                try:
                    await c.leases.release_due()
                    worked = await c.step()
                    # the end-of-input signal first: read before the streams, a "done" means every
                    # event was appended before the drained check looks
                    if (not worked and c.until_idle and not await input_open(c.client, c.settings)
                            and await drained(c.client, c.settings)):
                        log.info("all partitions drained; exiting")
                        break
                except (*UNAVAILABLE, RuntimeError) as exc:
                    if not unavailable(exc):
                        raise
                    # a read or an apply may have been lost on the way (entries delivered to us, or
                    # applied on a master that died before replicating): our pending entries first
                    log.warning("redis unavailable (%s); retrying from our pending entries", exc)
                    c.leases.mark_owned_recovering()
                    await c.clock.sleep(RECOVER_PAUSE_S)
        finally:
            self.closing = True          # the heartbeat loop also ends by itself at its next turn
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            try:
                await c.leases.leave()
            except (*UNAVAILABLE, RuntimeError) as exc:      # leases expire by themselves
                if not unavailable(exc):
                    raise

    async def heartbeat_loop(self) -> None:
        c = self.c
        beats = 0
        while not self.closing:
            await c.clock.sleep(c.settings.heartbeat_ms / 1000)
            try:
                await c.leases.heartbeat()
                beats += 1
                if beats % STRAY_CLAIM_EVERY == 0:
                    for p in sorted(c.leases.owned):
                        await c.leases.claim_pending(p, min_idle_ms=2 * c.settings.lease_ttl_ms)
                if beats % TRIM_EVERY == 0 and c.leases.owned:
                    c.metrics.trimmed.inc(await trim_inputs(c.client, c.settings, sorted(c.leases.owned)))
                await c.lag.observe()
                await c.catalog.refresh(c.client)
            except Exception as exc:  # a heartbeat must never die silently
                if unavailable(exc):
                    log.warning("heartbeat failed: %s", exc)
                else:
                    log.exception("heartbeat error")
            c.metrics.owned.set(len(c.leases.owned))


async def serve(url: str, settings: Settings, until_idle: bool) -> None:
    """One consumer in this event loop: /metrics when metrics_port is set, SIGTERM / SIGINT finish
    the current batch, release the leases and leave."""
    from .consumer import Consumer
    client = async_client(url, retry=False)          # the consumer recovers on its own
    consumer = Consumer(client, settings, consumer_name(), until_idle=until_idle)
    if settings.metrics_port is not None:
        port = consumer.metrics.serve(settings.metrics_port)    # the next free port when taken
        process_log.info("serving /metrics on port %d", port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    process_log.info("consumer %s joining group %s", consumer.name, settings.group)
    try:
        await consumer.run()
    finally:
        await client.aclose()


def consume(url: str, settings: Settings, *, until_idle: bool = False, profile: str | None = None) -> None:
    """The ``shopstream consume`` process (uvloop; with ``profile``, cProfile stats written there)."""
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.runcall(aio.run, serve(url, settings, until_idle))
        profiler.dump_stats(profile)
    else:
        aio.run(serve(url, settings, until_idle))

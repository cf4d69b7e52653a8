"""A consumer exports per-partition series (pending, lag, watermark) only for partitions it owns:
when a partition moves to another consumer (released on rebalance, or its lease lost), its
series go, so sums over consumers count each partition once."""

from __future__ import annotations

import asyncio

from shopstream.consumers.consumer import Consumer
from shopstream.engine import control
from shopstream.engine.keys import LEASE, Keys
from shopstream.engine.producer import publish

from .helpers import event
from .support import wait_until_async

T0 = 1_793_520_000_000_000
SERIES = ("shopstream_pending_entries", "shopstream_consumer_lag_entries", "shopstream_watermark_seconds")


def exported(consumer: Consumer) -> dict[str, set[int]]:
    """metric -> partitions with a series in this consumer's registry."""
    found: dict[str, set[int]] = {name: set() for name in SERIES}
    for family in consumer.metrics.registry.collect():
        for sample in family.samples:
            if sample.name in found:
                found[sample.name].add(int(sample.labels["partition"]))
    return found


async def test_series_of_a_partition_leave_with_it(backend, settings):
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, [event(f"user-{i}", T0 + i * 1_000_000) for i in range(200)], settings)
    everything = set(range(settings.partitions))
    first = Consumer(backend.aio, settings, "c0", idle_advance=False)
    second = Consumer(backend.aio, settings, "c1", idle_advance=False)
    tasks = [asyncio.create_task(first.run())]
    try:
        await wait_until_async(lambda: all(v == everything for v in exported(first).values()), what="c0 to export every partition")

        tasks.append(asyncio.create_task(second.run()))                 # a rebalance: c0 releases some
        await wait_until_async(lambda: first.leases.owned and second.leases.owned
                    and first.leases.owned | second.leases.owned == everything
                    and exported(first)["shopstream_consumer_lag_entries"] == first.leases.owned
                    and exported(second)["shopstream_consumer_lag_entries"] == second.leases.owned,
                    what="the partitions and their series to split")
        for name, partitions in exported(first).items():
            assert partitions <= first.leases.owned, name

        p = min(second.leases.owned)                                      # c1 loses a lease (e.g. a stall)
        keys = Keys(settings.namespace, settings.partitions)
        second.stop()
        await asyncio.wait_for(tasks.pop(), 30)
        assert all(not partitions for partitions in exported(second).values())   # left: nothing exported
        await wait_until_async(lambda: p in first.leases.owned, what="c0 to take the partition back")
        backend.sync.set(keys.partition(p).key(LEASE), "someone-else", px=60_000)
        await wait_until_async(lambda: p not in first.leases.owned, what="c0 to notice the lost lease")
        for name, partitions in exported(first).items():
            assert p not in partitions, name
    finally:
        for consumer in (first, second):
            consumer.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

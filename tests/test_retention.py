"""Retention never drops unread input: streams are trimmed only below what every consumer group
acknowledged (and older than input_retention_ms); producers meet a hard cap with BackPressure."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from shopstream.consumers.consumer import Consumer
from shopstream.engine import control, export
from shopstream.engine.keys import Keys
from shopstream.engine.producer import BackPressure, publish
from shopstream.engine.retention import floors, trim_inputs

from .helpers import consume_all, event
from .support import wait_until_async
from .support import acl_server  # noqa: F401  (fixture: a real server with ops/redis/users.acl)

T0 = 1_793_520_000_000_000
FAR_FUTURE_MS = 10**13          # "now" for trims that ignore the retention horizon


def events(n: int, user: str = "u1", start: int = 0) -> list[bytes]:
    return [event(user, T0 + (start + i) * 1_000_000) for i in range(n)]


async def test_trim_keeps_what_any_group_has_not_acknowledged(backend, settings):
    s = settings.replace(partitions=1)
    stream = Keys(s.namespace, 1).partition(0).clicks
    await control.ensure_groups(backend.aio, s)
    publish(backend.sync, events(100), s)
    ids = [entry_id for entry_id, _ in backend.sync.xrange(stream)]
    backend.sync.xreadgroup(s.group, "c", {stream: ">"}, count=60)
    backend.sync.xack(stream, s.group, *ids[:40], *ids[50:60])           # 40..49 still pending
    assert await trim_inputs(backend.aio, s, [0], now_ms=FAR_FUTURE_MS) == 40
    assert backend.sync.xrange(stream, count=1)[0][0] == ids[40]          # the smallest pending stays

    backend.sync.xack(stream, s.group, *ids[40:50])                       # nothing pending: up to last-delivered
    await trim_inputs(backend.aio, s, [0], now_ms=FAR_FUTURE_MS)
    assert backend.sync.xrange(stream, count=1)[0][0] == ids[59]

    backend.sync.xgroup_create(stream, "archiver", id=ids[59])            # a second group (an archiver)
    backend.sync.xreadgroup(s.group, "c", {stream: ">"})                  # the engine reads on, the archiver not
    backend.sync.xack(stream, s.group, *ids[60:])
    assert await trim_inputs(backend.aio, s, [0], now_ms=FAR_FUTURE_MS) == 0
    assert backend.sync.xlen(stream) == 41                                 # held back by the archiver


async def test_a_stream_without_a_group_is_never_trimmed(backend, settings):
    s = settings.replace(partitions=1)
    publish(backend.sync, events(30), s)                                   # no ensure_groups: no group
    assert await floors(backend.aio, Keys(s.namespace, 1).partition(0).inputs) == {}
    assert await trim_inputs(backend.aio, s, [0], now_ms=FAR_FUTURE_MS) == 0
    assert backend.sync.xlen(Keys(s.namespace, 1).partition(0).clicks) == 30


async def test_acknowledged_input_is_kept_for_the_retention_window(backend, settings):
    s = settings.replace(partitions=1, input_retention_ms=60_000)
    stream = Keys(s.namespace, 1).partition(0).clicks
    await control.ensure_groups(backend.aio, s)
    publish(backend.sync, events(20), s)
    await consume_all(backend, s)
    assert await trim_inputs(backend.aio, s, [0]) == 0                     # all acknowledged, all recent
    assert backend.sync.xlen(stream) == 20
    assert await trim_inputs(backend.aio, s, [0], now_ms=int(time.time() * 1000) + 120_000) == 19


async def test_an_outage_longer_than_the_old_maxlen_loses_nothing(backend, settings):
    """Consumers down while producers write 5x what `MAXLEN ~ input_maxlen` kept: every event is
    applied once they are back (before: the oldest were trimmed unread and dead-lettered)."""
    s = settings.replace(input_maxlen=100)
    await control.ensure_groups(backend.aio, s)
    raws = [event(f"user-{i % 13}", T0 + i * 1_000_000) for i in range(2000)]
    publish(backend.sync, raws, s)
    await consume_all(backend, s)
    await control.flush(backend.aio, s)
    out = await export.collect(backend.aio, s)
    assert sum(x["event_count"] for x in out.sessions) == len(raws) and not out.dlq


async def test_the_consumer_heartbeat_trims_its_partitions(backend, settings):
    s = settings.replace(input_retention_ms=0)
    keys = Keys(s.namespace, s.partitions)
    await control.ensure_groups(backend.aio, s)
    publish(backend.sync, [event(f"user-{i % 11}", T0 + i * 1_000_000) for i in range(400)], s)
    consumer = Consumer(backend.aio, s, "c0", idle_advance=False)
    task = asyncio.create_task(consumer.run())
    try:
        def trimmed() -> bool:         # (the counter moves just after the streams shrink: wait for both)
            assert not task.done(), "the consumer stopped"
            return (sum(backend.sync.xlen(p.clicks) for p in keys.all_partitions()) <= s.partitions
                    and consumer.metrics.trimmed._value.get() >= 400 - s.partitions)
        await wait_until_async(trimmed, 30, "the heartbeat to trim the acknowledged input")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


async def test_publish_refuses_a_batch_at_the_hard_cap(backend, settings):
    s = settings.replace(partitions=1, input_hard_cap=50)
    stream = Keys(s.namespace, 1).partition(0).clicks
    before = REGISTRY.get_sample_value("shopstream_producer_backpressure_total", {"source": "clicks"}) or 0
    assert publish(backend.sync, events(60), s) == 60                      # checked per batch, before it
    with pytest.raises(BackPressure) as refused:
        publish(backend.sync, events(5, start=60), s)
    assert "holds 60 entries, at its cap (input_hard_cap = 50)" in str(refused.value)
    assert "scale consumers or raise input_hard_cap" in str(refused.value)
    assert refused.value.stream == stream and refused.value.published == 0
    assert backend.sync.xlen(stream) == 60                                 # nothing of the batch written
    assert REGISTRY.get_sample_value("shopstream_producer_backpressure_total", {"source": "clicks"}) == before + 1
    await control.ensure_groups(backend.aio, s)
    await consume_all(backend, s)
    await trim_inputs(backend.aio, s, [0], now_ms=FAR_FUTURE_MS)
    assert publish(backend.sync, events(5, start=60), s) == 5             # consumers caught up: flows again


def test_the_acl_users_may_trim_check_the_cap_and_read_group_state(acl_server):
    """ops/redis/users.acl: the producer may XLEN (the cap), the consumer may XTRIM (the trim in its
    heartbeat), KEDA may read group state and nothing else."""
    import redis
    import redis.asyncio as aioredis

    from shopstream.engine.settings import Settings
    url = acl_server
    s = Settings(partitions=1, input_retention_ms=0, metrics_port=None)
    publish(redis.Redis.from_url(url("shopstream-producer", "change-me-producer")), events(10), s)

    async def trim() -> int:
        consumer = aioredis.Redis.from_url(url("shopstream-consumer", "change-me-consumer"))
        try:
            await control.ensure_groups(consumer, s)
            stream = Keys(s.namespace, 1).partition(0).clicks
            entries = await consumer.xreadgroup(s.group, "c", {stream: ">"})
            await consumer.xack(stream, s.group, *[entry_id for entry_id, _ in entries[0][1]])
            return await trim_inputs(consumer, s, [0])
        finally:
            await consumer.aclose()
    assert asyncio.run(trim()) == 9
    keda = redis.Redis.from_url(url("shopstream-keda", "change-me-keda"))
    assert keda.xinfo_groups("ss:{0}:clicks")[0]["pending"] == 0
    assert keda.xpending("ss:{0}:clicks", "shopstream")["pending"] == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        keda.xadd("ss:{0}:clicks", {"e": b"{}"})

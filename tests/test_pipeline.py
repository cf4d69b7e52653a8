"""`shopstream run` overlaps the replay and the consumers: the end-of-input signal (issue 15)."""

from __future__ import annotations

import asyncio
import time

import fakeredis

from shopstream.consumers.consumer import Consumer
from shopstream.engine import control
from shopstream.engine.producer import publish, publish_mixed
from shopstream.engine.keys import CLICKS, STATE, SUPPORT, TX, Keys

from .helpers import event

T0 = 1_793_520_000_000_000


async def _until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_until_idle_waits_while_the_input_is_open_then_drains_and_exits(real, settings):
    """A consumer started before the producer (as `run` starts them) finds the streams drained at
    once; while the input is "open" it must keep going, and exit only after "done" and the drain.
    (Before the signal: it exited after its first empty round, and the events came too late.)"""
    await control.ensure_groups(real.aio, settings)
    control.set_input_state(real.sync, settings, control.INPUT_OPEN)
    consumer = Consumer(real.aio, settings, "c0", until_idle=True, idle_advance=False)
    steps = []
    step = consumer.applier.step

    async def counted() -> bool:
        worked = await step()
        steps.append(worked)
        return worked

    consumer.applier.step = counted
    task = asyncio.ensure_future(consumer.run())
    try:
        await _until(lambda: len(steps) >= 5 or task.done(), "five rounds")
        assert not task.done(), "exited on drained streams while the input was still open"
        publish(real.sync, [event(f"u{i}", T0 + i * 1_000_000) for i in range(50)], settings)
        control.set_input_state(real.sync, settings, control.INPUT_DONE)
        await asyncio.wait_for(task, timeout=60)
    finally:
        if not task.done():
            task.cancel()
    counters = await control.group_state(real.aio, settings, list(range(settings.partitions)))
    assert all(state == (0, 0) for state in counters.values())
    applied = sum(int(real.sync.hget(p.key(STATE), "applied") or 0)
                  for p in Keys(settings.namespace, settings.partitions).all_partitions())
    assert applied == 50


async def test_input_open_only_between_open_and_done(settings):
    """No key (a stream replayed before `consume --until-idle` starts): not open, so drained means
    the end, as before the signal existed."""
    server = fakeredis.FakeServer()
    sync, aio = fakeredis.FakeRedis(server=server), fakeredis.FakeAsyncRedis(server=server)
    assert not await control.input_open(aio, settings)
    control.set_input_state(sync, settings, control.INPUT_OPEN)
    assert await control.input_open(aio, settings)
    control.set_input_state(sync, settings, control.INPUT_DONE)
    assert not await control.input_open(aio, settings)


def test_publish_mixed_sends_each_event_to_its_source_stream(settings):
    r = fakeredis.FakeRedis()
    items = [(CLICKS, event("u1", T0)), (TX, b'{"user_id":"u1","transaction_id":"t"}'),
             (SUPPORT, b'{"user_id":"u2","ticket_id":"k"}'), (CLICKS, b"not json")]
    assert publish_mixed(r, items, settings) == 4
    keys = Keys(settings.namespace, settings.partitions)
    lengths = {source: sum(r.xlen(p.key(source)) for p in keys.all_partitions()) for source in (CLICKS, TX, SUPPORT)}
    assert lengths == {CLICKS: 2, TX: 1, SUPPORT: 1}


async def test_run_loads_a_folders_catalog_before_the_consumers_start(real, tmp_path, monkeypatch):
    """The consumers now start with the replay; they read the catalog when they join and the clicks
    take their categories from it, so a folder's catalog must be in before they start (it was loaded
    after them, racing their join, when the overlap came in)."""
    from shopstream.engine import pipeline
    from shopstream.engine.settings import Settings
    from shopstream.engine.tools.generate import GeneratorConfig, write_all

    write_all(tmp_path / "data", GeneratorConfig(seed=3, users=20, hours=0.5))
    settings = Settings(redis_url=real.url, namespace="cat", partitions=4, metrics_port=None)
    products = []
    start = pipeline.start_consumers

    def starting(s, n):
        products.append(real.sync.xlen(Keys(s.namespace, s.partitions).catalog))
        return start(s, n)

    monkeypatch.setattr(pipeline, "start_consumers", starting)
    result = await pipeline.run_file(tmp_path / "data", tmp_path / "out", settings, consumers=1)
    assert products and products[0] == result.published["catalog"] > 0
    assert list(result.published) == ["catalog", "clicks", "tx", "support"]

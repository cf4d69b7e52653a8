"""Engine behaviour beyond the reference: exactly-once effects, DLQ, ownership, TTLs, metrics."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shopstream.consumers.consumer import Consumer
from shopstream.engine import contract, control, export
from shopstream.engine.batch import apply_args, decode_entries
from shopstream.engine.schema import agent_of
from shopstream.engine.keys import CLICKS, OPEN, STATE, TX, Keys
from shopstream.engine.rules import Rules
from shopstream.engine.metrics import ConsumerMetrics
from shopstream.engine.partitioning import partition_of
from shopstream.engine.producer import publish
from shopstream.engine.scripts import NotOwner, Scripts, translate
from redis.exceptions import ResponseError

from .helpers import by_rule, consume_all, event, run_events
from .support import wait_until_async

T0 = 1_793_520_000_000_000


async def publish_and_drain(backend, settings, raws):
    publish(backend.sync, raws, settings)
    await consume_all(backend, settings)


async def dump(client) -> dict:
    """Every key and its value, for before/after comparisons."""
    out = {}
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        if kind == "hash":
            out[key] = await client.hgetall(key)
        elif kind == "string":
            out[key] = await client.get(key)
        elif kind == "zset":
            out[key] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            out[key] = [(i, f) for i, f in await client.xrange(key)]
        else:
            out[key] = kind
    return out


async def read_and_apply_twice(backend, settings, raws):
    """Deliver entries once, apply them twice (as after a redelivery): the second apply changes nothing."""
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, raws, settings)
    keys = Keys(settings.namespace, settings.partitions)
    scripts = Scripts(backend.aio)
    calls = []
    for part in keys.all_partitions():
        await backend.aio.set(part.key("lease"), "me")
        reply = await backend.aio.xreadgroup(settings.group, "me", {part.clicks: ">"}, count=10_000)
        if not reply:
            continue
        d = decode_entries([(CLICKS, e) for e in reply[0][1]], part.p, time.time_ns() // 1000, settings)
        args = apply_args(settings, "me", time.time_ns() // 1000, Rules().to_lua(), d.events)
        calls.append((part, args))
    first = [await scripts.run("apply_batch", part, args) for part, args in calls]
    before = await dump(backend.aio)
    second = [await scripts.run("apply_batch", part, args) for part, args in calls]
    after = await dump(backend.aio)
    return first, second, before, after


async def test_applying_the_same_entries_twice_changes_nothing(backend, settings):
    raws = [event("bot", T0 + i * 1000) for i in range(150)] + [event(f"u{i}", T0 + i) for i in range(40)]
    first, second, before, after = await read_and_apply_twice(backend, settings, raws)
    assert sum(r.applied for r in first) == 190 and sum(r.duplicates for r in first) == 0
    assert sum(r.applied for r in second) == 0 and sum(r.duplicates for r in second) == 190
    for state in (before, after):   # only the duplicates counter may move
        for key, value in state.items():
            if key.endswith(b":state"):
                value.pop(b"duplicates", None)
    assert before == after


async def test_bad_records_go_to_the_dead_letter_stream_and_good_ones_flow(backend, settings):
    bad = [b"not json", b'{"user_id": "u1"}', b'{"user_id": "", "event_type": "x", "timestamp": 1}',
           b'{"user_id": "u1", "event_type": "x", "timestamp": "2999-01-01T00:00:00Z"}',
           b'{"user_id": "u1", "event_type": "x", "timestamp": "2026-02-30T00:00:00Z"}',
           b'{"user_id": "' + b"x" * 300 + b'", "event_type": "x", "timestamp": 1}', b"\xff\xfe", b"[]", b"null"]
    good = [event("u1", T0), event("u1", T0 + 1000)]
    out = await run_events(backend, settings, bad + good)
    assert len(out.dlq) == len(bad)
    assert {d["record"] for d in out.dlq} == {b.decode("utf-8", "replace") for b in bad}
    assert all(d["reason"] for d in out.dlq)
    assert [s["event_count"] for s in out.sessions] == [2]


async def test_a_consumer_without_the_lease_cannot_apply(backend, settings):
    await control.ensure_groups(backend.aio, settings)
    part = Keys(settings.namespace, settings.partitions).partition(0)
    await backend.aio.set(part.key("lease"), "someone-else")
    with pytest.raises(NotOwner):
        try:
            await Scripts(backend.aio).run("apply_batch", part, apply_args(settings, "me", 0, Rules().to_lua(), b"[]"))
        except ResponseError as exc:
            raise translate(exc) from None
    assert await backend.aio.exists(part.key("state")) == 0


async def test_a_call_with_the_wrong_number_of_arguments_changes_nothing(backend, settings):
    """The script checks its ARGV count against engine/contract.py before anything else."""
    part = Keys(settings.namespace, settings.partitions).partition(0)
    await backend.aio.set(part.key("lease"), "me")
    args = contract.argv(apply_args(settings, "me", 0, Rules().to_lua(), b"[]"))
    with pytest.raises(ResponseError, match="SS_CONTRACT apply_batch takes 13 ARGV, got 12"):
        await Scripts(backend.aio).call("apply_batch", part.apply_keys(), args[:-1])
    assert await backend.aio.exists(part.key("state")) == 0


async def test_every_state_key_has_a_ttl(backend, settings):
    await run_events(backend, settings, [event(f"u{i}", T0 + i * 1000) for i in range(30)]
                     + [event("bot", T0 + i * 1000) for i in range(120)], flush=False)
    ttl_kinds = (b":user:", b":count:", b":hll:", b":fired:")
    keys = [k async for k in backend.aio.scan_iter(count=1000)]
    per_user = [k for k in keys if any(t in k for t in ttl_kinds)]
    assert per_user and any(b":fired:" in k for k in per_user)
    for key in per_user:
        assert 0 < await backend.aio.pttl(key) <= settings.state_ttl_ms, key


async def test_flush_removes_all_per_user_state(backend, settings):
    async def state() -> tuple[list[bytes], int]:
        keys = [k async for k in backend.aio.scan_iter(count=1000)]
        per_user = [k for k in keys if b":user:" in k or b":count:" in k or b":hll:" in k]
        parts = Keys(settings.namespace, settings.partitions).all_partitions()
        return per_user, sum([await backend.aio.zcard(part.key("open")) for part in parts])

    await run_events(backend, settings, [event(f"u{i}", T0 + i * 1000) for i in range(30)], flush=False)
    per_user, open_sessions = await state()
    assert {b":user:", b":count:", b":hll:"} <= {kind for kind in (b":user:", b":count:", b":hll:")
                                                 if any(kind in k for k in per_user)} and open_sessions == 30
    await control.flush(backend.aio, settings)
    assert await state() == ([], 0)


async def test_every_entry_delivered_twice_gives_the_reference_result(real, settings):
    """A consumer reads every entry and dies before applying (first delivery); the next owners
    reclaim them (second delivery) and apply: the result equals the batch reference."""
    from . import reference as ref
    from .helpers import generated_events
    events = sorted(generated_events(seed=21, users=12), key=lambda e: e[1])
    await control.ensure_groups(real.aio, settings)
    publish(real.sync, [event(*e) for e in events], settings)
    keys = Keys(settings.namespace, settings.partitions)
    for part in keys.all_partitions():                      # the dead consumer: reads all, applies nothing
        await real.aio.xreadgroup(settings.group, "dead", {part.clicks: ">"}, count=100_000)
        await real.aio.set(part.key("lease"), "dead", px=300)
    state = await control.group_state(real.aio, settings, list(range(settings.partitions)))
    assert sum(pending for pending, _ in state.values()) == len(events)
    await consume_all(real, settings, consumers=2)
    await control.flush(real.aio, settings)
    out = await export.collect(real.aio, settings)
    assert [{k: s[k] for k in ("user_id", "start", "end", "event_count", "counts")} for s in out.sessions] \
        == ref.sessions(events)
    assert by_rule(out.alerts) == ref.alerts(events)
    assert sum(m["events"] for m in out.minutes) == len(events)
    assert await control.drained(real.aio, settings)


async def test_consumers_split_the_partitions_and_hand_them_over(real, settings):
    """Two consumers own disjoint partitions; when one leaves, the other takes all of them."""
    settings = settings.replace(partitions=8)
    await control.ensure_groups(real.aio, settings)
    a = Consumer(real.aio, settings, "a", idle_advance=False)
    b = Consumer(real.aio, settings, "b", idle_advance=False)
    ta, tb = asyncio.create_task(a.run()), asyncio.create_task(b.run())
    await wait_until_async(lambda: len(a.leases.owned) == 4 and len(b.leases.owned) == 4, 10, "a and b to own 4 each")
    assert a.leases.owned.isdisjoint(b.leases.owned)
    b.stop()
    await tb
    await wait_until_async(lambda: len(a.leases.owned) == 8, 10, "a to own all 8")
    publish(real.sync, [event(f"u{i}", T0 + i) for i in range(20)], settings)
    await wait_until_async(lambda: a.metrics.events.labels("applied")._value.get() == 20, 10, "a to apply 20 events")
    a.stop()
    await ta


async def test_consumer_metrics_are_exported(backend, settings):
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, [event("bot", T0 + i * 1000) for i in range(120)] + [b"junk"], settings)
    consumer = Consumer(backend.aio, settings, "m", metrics=metrics, until_idle=True, idle_advance=False)
    await asyncio.wait_for(consumer.run(), 30)
    text = generate_latest(registry).decode()
    assert 'shopstream_events_total{outcome="applied"} 120.0' in text
    assert 'shopstream_events_total{outcome="dead_letter"} 1.0' in text
    assert 'shopstream_alerts_total{rule="events_per_minute"} 1.0' in text
    assert 'shopstream_alerts_total{rule="burst"} 1.0' in text            # the same 101st event
    assert 'shopstream_alerts_total{rule="decision"} 1.0' in text         # block, on the same event
    assert "shopstream_detection_latency_seconds_count 3.0" in text
    assert "shopstream_batch_duration_seconds_count" in text


def test_user_ids_cannot_escape_their_partition(settings):
    """Whatever the id, its state key starts with its own partition's tag."""
    for user in ["{0}", "x}{1}", "ss:{2}:state", "*", "\n"]:
        p = partition_of(user, settings.partitions)
        key = Keys("ss", settings.partitions).partition(p).user(user)
        assert key.startswith(f"ss:{{{p}}}:user:") and key.endswith(user)


@pytest.mark.parametrize("corrupt", ["hash", "garbage", '{"s":[["x",1,1,{}]],"m":[],"d":0}',
                                     '{"s":[["1",1,1,{}]],"m":["a",1],"d":0}', '{"s":[],"m":[],"d":0}',
                                     msgspec.msgpack.encode({"s": [["x", 1, 1, {}]], "m": [], "d": 0}),
                                     msgspec.msgpack.encode({"s": [[1, 1, 1, {}, -1, {}, "dv"]], "m": [], "d": 0}),
                                     msgspec.msgpack.encode({"s": [[1, 1, 1, {"a": 1}, -1, {}, {"ios": "x"}]],
                                                             "m": [], "d": 0}),
                                     b"\x92\xcd"])
async def test_unreadable_user_state_is_poison_not_a_half_applied_batch(backend, settings, corrupt):
    """A user whose state key cannot be read: its events go to the DLQ, everyone else flows."""
    keys = Keys(settings.namespace, settings.partitions)
    bad = keys.partition(partition_of("u1", settings.partitions)).user("u1")
    if corrupt == "hash":
        await backend.aio.hset(bad, "x", "1")
    else:
        await backend.aio.set(bad, corrupt)
    raws = [event("u2", T0), event("u1", T0 + 1), event("u2", T0 + 2), event("u1", T0 + 3), event("u3", T0 + 4)]
    out = await run_events(backend, settings, raws)
    assert sorted((s["user_id"], s["event_count"]) for s in out.sessions) == [("u2", 2), ("u3", 1)]
    assert len(out.dlq) == 2 and all("u1" in d["record"] and "state" in d["reason"] for d in out.dlq)
    state = await control.group_state(backend.aio, settings, list(range(settings.partitions)))
    assert all(pending == 0 for pending, _ in state.values())


async def test_user_state_is_messagepack_and_the_json_of_earlier_versions_is_still_read(backend, settings):
    """The state layout of lua/includes/partition_state.lua, read back by Python (fakeredis runs
    tests/lua/cmsgpack.lua in place of Redis's cmsgpack: this also checks they agree).  A user
    whose state and profile an earlier version wrote (JSON state; clicks counted into the profile
    at once) carries on from them, and every click is counted once."""
    keys = Keys(settings.namespace, settings.partitions)
    old = keys.partition(partition_of("old", settings.partitions))
    await backend.aio.set(old.user("old"), '{"s":[["%d",60000000,3,{"page_view":2,"product_view":1},-1,'
                                           '{"shoes":1}]],"m":[],"d":1860000000}' % T0)
    await backend.aio.zadd(old.key(OPEN), {"old": T0 + 1_860_000_000})          # its due time, as it was kept
    await backend.aio.hset(old.profile("old"), mapping={"events": 3, "category:shoes": 1,
                                                       "first_seen": "2026-11-01T06:40:00.000000Z"})
    raws = [event("new", T0 + 1000, device="ios", country="FR", ip="10.0.0.9"), event("new", T0 + 2000),
            event("old", T0 + 120_000_000)]
    out = await run_events(backend, settings, raws, flush=False)
    profiles = {p["user_id"]: p for p in out.profiles}
    assert profiles["new"]["events"] == 2 and "device:ios" in profiles["new"]    # no profile hash yet
    assert "sessions" not in profiles["new"]
    assert (profiles["old"]["events"], profiles["old"]["category:shoes"]) == (4, 1)
    state = msgspec.msgpack.decode(await backend.aio.get(keys.partition(partition_of("new", settings.partitions))
                                                           .user("new")))
    (session,) = state["s"]
    agent = "#" + agent_of("ios", None)                # the device identity and the IPv4 /16, kept with the devices
    assert session == [T0 + 1000, 1000, 2, {"page_view": 2}, -1, [], {"ios": 0, agent: 0, "@10.0": 0}, {"FR": 0},
                       0, -1, 1, 1, 1]                # no flags, no speed signal; one in-order gap of 1 ms
    assert [len(r) for r in state["i"][1::2]] == [18]  # two clicks: two 9-byte records (key, second)
    assert state["u"] == T0 + 2000 + settings.session_gap_ms * 1000 and state["w"] == [T0, "10.0.0.9"]
    assert state["m"] == [] and "o" not in state          # the minute's click count (rule 1) is its records
    # (m stays, empty: the previous version requires it, and reads this state during a rolling upgrade)
    (session,) = msgspec.msgpack.decode(await backend.aio.get(old.user("old")))["s"]
    assert session[:4] == [T0, 120_000_000, 4, {"page_view": 3, "product_view": 1}]
    await control.flush(backend.aio, settings)
    profiles = {p["user_id"]: p for p in (await export.collect(backend.aio, settings)).profiles}
    assert (profiles["old"]["events"], profiles["old"]["category:shoes"], profiles["old"]["sessions"]) == (4, 1, 1)


async def test_a_state_whose_minutes_carry_whole_counts_is_read_with_its_counts(backend, settings):
    """States written before the minute counts came from the click records keep each minute's whole
    count beside its records (m): read now, a minute counts the clicks it counted then, so rule 1
    fires on the 101st click of a minute whether or not the first 100 have records."""
    keys = Keys(settings.namespace, settings.partitions)
    part = keys.partition(partition_of("was", settings.partitions))
    minute = T0 // 60_000_000
    records = "".join(f"k{i:07d}" + chr(i % 60) for i in range(60))   # 60 of its 100 clicks (msgpack str, as Lua writes)
    await backend.aio.set(part.user("was"), msgspec.msgpack.encode(
        {"s": [[T0, 59_000_000, 100, {"page_view": 100}, -1, [], {}, {}]], "m": [minute, 100],
         "i": [minute, records], "u": T0 + 59_000_000 + settings.session_gap_ms * 1000}))
    await backend.aio.zadd(part.key(OPEN), {"was": T0 + 59_000_000 + settings.session_gap_ms * 1000})
    out = await run_events(backend, settings, [event("was", T0 + 59_500_000)], flush=False)
    assert by_rule(out.alerts) == [(export.format_us(minute * 60_000_000), "was")]
    state = msgspec.msgpack.decode(await backend.aio.get(part.user("was")))
    assert state["m"] == [] and state["o"] == [minute, 40]       # rewritten: what the records do not hold


async def test_an_entry_whose_apply_keeps_failing_goes_to_the_dlq_and_the_partition_flows(backend, settings):
    """A script error on one entry (simulated): after max_deliveries failures of its batch the
    batch is split, that entry is dead-lettered with the error and its delivery count."""
    settings = settings.replace(max_deliveries=2)
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, [event("good", T0), event("poison", T0 + 1), event("good", T0 + 2)], settings)
    consumer = Consumer(backend.aio, settings, "c", until_idle=True, idle_advance=False)
    real_call = consumer.scripts.call

    def failing_call(name, keys, args, client=None):
        if name == "apply_batch" and b'"poison"' in args[10]:        # ApplyArgs.events
            raise ResponseError("ERR user_script:42: attempt to index a nil value script: abc, on @user_script:42.")
        return real_call(name, keys, args, client)
    consumer.scripts.call = failing_call
    await asyncio.wait_for(consumer.run(), 60)
    await control.flush(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    assert [(s["user_id"], s["event_count"]) for s in out.sessions] == [("good", 2)]
    assert len(out.dlq) == 1 and '"poison"' in out.dlq[0]["record"]
    assert "apply failed 2 times" in out.dlq[0]["reason"] and "delivered" in out.dlq[0]["reason"]
    assert "attempt to index a nil value" in out.dlq[0]["reason"]


async def test_a_producer_retry_of_the_same_event_id_is_applied_once(backend, settings):
    first = event("u1", T0, event_id="e-1")
    raws = [first, event("u1", T0 + 1000, event_id="e-2"), first,          # e-1 retried
            event("u2", T0, "page_view"), event("u2", T0, "page_view")]       # no event_id: no dedup
    out = await run_events(backend, settings, raws)
    assert sorted((s["user_id"], s["event_count"]) for s in out.sessions) == [("u1", 2), ("u2", 2)]
    assert sum(m["events"] for m in out.minutes) == 4


async def test_a_retried_batch_of_1000_clicks_of_one_user_counts_once(backend, settings):
    """The dedup horizon is a time, not a count: a click's event_id is remembered as long as the click
    is not late (its minute is kept), so a producer retrying a whole batch counts every event once.
    (Before: only the user's last 16 ids were remembered, and the retry counted 984 events twice.)"""
    batch = [event("u1", T0 + i * 50_000, event_id=f"e{i}") for i in range(1000)]     # 50 s of clicks
    out = await run_events(backend, settings, batch + batch)
    assert [s["event_count"] for s in out.sessions] == [1000]
    assert sum(m["events"] for m in out.minutes) == 1000
    state = await backend.aio.hgetall(Keys(settings.namespace, settings.partitions)
                                      .partition(partition_of("u1", settings.partitions)).key(STATE))
    assert (int(state[b"applied"]), int(state[b"duplicates"])) == (1000, 1000)


async def test_input_after_a_flush_goes_to_the_late_stream_saying_the_input_ended(backend, settings):
    """A flushed partition's results are final: a click, transaction or ticket published after the
    flush (by a producer that did not ask) is not applied, and the late stream says why."""
    out = await run_events(backend, settings, [event("u1", T0)])
    assert len(out.sessions) == 1
    await publish_and_drain(backend, settings, [event("u1", T0 + 1000)])
    publish(backend.sync, [{"transaction_id": "t1", "user_id": "u1", "amount": "5.00", "currency": "EUR",
                            "status": "completed", "timestamp": "2026-11-01T06:40:01Z"}], settings, TX)
    await consume_all(backend, settings)
    out = await export.collect(backend.aio, settings)
    assert len(out.sessions) == 1 and len(out.late) == 2
    assert all(late["reason"].startswith("input ended") for late in out.late)


async def test_a_watermark_jump_closes_sessions_in_bounded_calls_and_the_consumer_continues(backend, settings):
    """No call does unbounded work: a jump of the watermark over many open sessions is closed
    close_per_call users at a time, and the consumer goes on calling until nothing is due (before:
    one call closed everything, up to a million sessions)."""
    settings = settings.replace(partitions=1, close_per_call=5)
    await control.ensure_groups(backend.aio, settings)
    await publish_and_drain(backend, settings, [event(f"u{i}", T0 + i) for i in range(40)])   # 40 open sessions
    publish(backend.sync, [event(f"next{i}", T0 + 3 * 3600 * 10**6) for i in range(3)], settings)  # the jump
    consumer = Consumer(backend.aio, settings, "c", until_idle=True, idle_advance=False)
    closed_per_call = []
    real_call = consumer.scripts.call

    async def counting_call(name, keys, args, client=None):
        reply = await real_call(name, keys, args, client)
        if name in ("apply_batch", "advance_watermark"):
            closed_per_call.append(reply[3] if name == "apply_batch" else reply[0])   # sessions_closed
        return reply
    consumer.scripts.call = counting_call
    await asyncio.wait_for(consumer.run(), 60)
    out = await export.collect(backend.aio, settings)                   # no flush: closed by the jump
    assert len(out.sessions) == 40 and len(closed_per_call) >= 8
    assert max(closed_per_call) <= 5 and sum(closed_per_call) == 40


async def test_clicks_count_as_ahead_only_once_the_partition_has_a_clock(backend, settings):
    """`ahead` counts clicks far ahead of the partition clock; while fewer than watermark_quorum users
    have clicked there is no clock, so nothing is ahead (before: every such click counted)."""
    settings = settings.replace(partitions=1)
    out_state = Keys(settings.namespace, 1).partition(0).key(STATE)
    await run_events(backend, settings, [event("a", T0 + i * 1000) for i in range(20)] + [event("b", T0)],
                     flush=False)
    assert await backend.aio.hget(out_state, "ahead") is None
    publish(backend.sync, [event("c", T0), event("d", T0 + 3600 * 10**6)], settings)   # clock at T0; d an hour on
    await consume_all(backend, settings)
    assert await backend.aio.hget(out_state, "ahead") == b"1"


async def test_a_consumer_that_stalled_past_its_lease_reads_nothing(real, settings):
    """Consumer a owns every partition, then stalls longer than its lease; b takes over; a wakes up
    and steps before its heartbeat noticed: it must not read (the entries would wait in its pending
    list and be applied later, out of order), so b applies everything in order."""
    from . import reference as ref
    from .helpers import generated_events
    events = sorted(generated_events(seed=31, users=10), key=lambda e: e[1])
    await control.ensure_groups(real.aio, settings)
    a = Consumer(real.aio, settings.replace(batch_size=50), "a", until_idle=True, idle_advance=False)
    await a.leases.heartbeat()
    assert a.leases.owned == set(range(settings.partitions))
    await asyncio.sleep(settings.lease_ttl_ms / 1000 + 0.1)     # the scenario: a stalls until its leases expire
    b = Consumer(real.aio, settings, "b", until_idle=True, idle_advance=False)
    await b.leases.heartbeat()
    assert b.leases.owned == set(range(settings.partitions))
    publish(real.sync, [event(*e) for e in events], settings)
    for p in a.leases.recovering:               # a had nothing pending: its next read is of new entries
        a.leases.recovered(p)
    assert await a.step() is False              # a wakes up: reads nothing (else the first 50 of each
    #                                             partition would be applied after the rest)
    await asyncio.wait_for(b.run(), 60)
    await control.flush(real.aio, settings)
    out = await export.collect(real.aio, settings)
    assert out.late == [] and by_rule(out.alerts) == ref.alerts(events)
    assert [{k: s[k] for k in ("user_id", "start", "end", "event_count", "counts")} for s in out.sessions] \
        == ref.sessions(events)


def test_a_lease_shorter_than_a_renewal_and_a_read_is_refused(settings):
    with pytest.raises(ValueError, match="lease_ttl_ms"):
        Consumer(None, settings.replace(lease_ttl_ms=60, heartbeat_ms=50, block_ms=20), "x")


def test_the_linger_decision_uses_the_input_rate_over_half_a_second_windows(settings):
    """Consumers linger only when their partitions take in more than linger_above_rate events/s
    each.  The rate is counted over windows of RATE_WINDOW_S: a burst read right after the previous
    read must not look like a high rate (it did when each read was divided by its own interval)."""
    from shopstream.consumers.applier import InputRate
    from shopstream.consumers.clock import ManualClock
    clock = ManualClock()
    rate = InputRate(clock)
    for dt, read in [(0.1, 100), (0.002, 170), (0.4, 30)]:      # 300 events in 0.502 s over 2 partitions
        clock.advance(dt)
        rate.observe(read, 2)
    assert rate.per_partition == pytest.approx(300 / 0.502 / 2)
    clock.advance(0.1)
    rate.observe(10_000, 2)                                      # inside the next window: not yet counted
    assert rate.per_partition == pytest.approx(300 / 0.502 / 2)
    assert rate.per_partition < settings.linger_above_rate


async def test_every_dead_letter_path_writes_one_record_shape_stamped_by_the_injected_clock(backend, settings):
    """Decode failures (a trimmed entry included), poison returned by the script and entries that keep
    failing go through one DeadLetterWriter: the same fields, acknowledged, at_ms from the clock."""
    from shopstream.consumers import deadletters
    from shopstream.consumers.clock import ManualClock
    from shopstream.engine.contract import Poison
    settings = settings.replace(partitions=1)
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, [b"junk", event("u1", T0), event("u2", T0)], settings)
    keys = Keys(settings.namespace, 1)
    reply = await backend.aio.xreadgroup(settings.group, "c", {keys.partition(0).clicks: ">"})
    entries = [(CLICKS, (entry_id, fields)) for entry_id, fields in reply[0][1]]
    clock = ManualClock(wall_us=T0)
    writer = deadletters.DeadLetterWriter(backend.aio, settings, keys, ConsumerMetrics(CollectorRegistry()), clock,
                                          cluster=False)
    decoded = decode_entries(entries[:1] + [(CLICKS, (b"0-1", None))], 0, T0, settings)
    (_, (poison_id, _)), (_, (failed_id, failed_fields)) = entries[1], entries[2]
    await writer.write(0, decoded.dead
                       + deadletters.from_poison(entries, [Poison(entry_id=poison_id, source=b"c", reason=b"why")])
                       + [deadletters.failed_apply(CLICKS, failed_id, failed_fields, 3, 3, RuntimeError("boom"))])
    written = [fields for _, fields in await backend.aio.xrange(keys.dlq)]
    assert len(written) == 4
    assert {frozenset(f) for f in written} == {frozenset([b"payload", b"reason", b"stream", b"entry_id",
                                                          b"partition", b"at_ms"])}
    assert {f[b"at_ms"] for f in written} == {str(T0 // 1000).encode()}
    assert [f[b"reason"] for f in written][2:] == [b"why", b"apply failed 3 times (delivered 3 times): boom"]
    assert (await backend.aio.xpending(keys.partition(0).clicks, settings.group))["pending"] == 0


async def test_leases_change_their_state_only_through_their_methods(backend, settings):
    from shopstream.consumers.clock import ManualClock
    from shopstream.consumers.leases import Leases
    clock = ManualClock()
    settings = settings.replace(partitions=2)
    await control.ensure_groups(backend.aio, settings)
    leases = Leases(backend.aio, Scripts(backend.aio), settings, "c", clock=clock)
    await leases.heartbeat()
    assert leases.owned == {0, 1} and leases.recovering == {0, 1}       # a new owner reads its pending first
    with pytest.raises(AttributeError):
        leases.owned.add(5)                                             # read-only views
    leases.recovered(0)
    assert leases.recovering == {1}
    leases.mark_owned_recovering()
    assert leases.recovering == {0, 1}
    assert leases.readable(margin_s=0.1) == [0, 1]
    clock.advance(settings.lease_ttl_ms / 1000)                         # our view of the lease expires
    assert leases.readable(margin_s=0.1) == []
    leases.lose(1)
    assert leases.owned == {0} and leases.recovering == {0}
    leases.mark_recovering(1)                                           # not ours: nothing to recover
    assert leases.recovering == {0}
    await leases.leave()
    assert leases.owned == set()


async def test_a_connection_closed_under_a_write_is_redis_going_away_not_a_crash(backend, settings):
    """uvloop raises RuntimeError ('... the handler is closed') when redis-py writes on a connection
    the server has just closed (a failover; uvloop issue 506), where plain asyncio gives an OSError
    that redis-py turns into ConnectionError.  The consumer recovers from its pending entries as for
    any Redis outage; the CI cluster failover test saw a consumer die of it.  Other RuntimeErrors
    still stop it (a bug must not be retried for ever)."""
    publish(backend.sync, [event("u1", T0), event("u2", T0 + 1)], settings)
    await control.ensure_groups(backend.aio, settings)
    worker = Consumer(backend.aio, settings, "c0", until_idle=True, idle_advance=False)
    step, failures = worker.step, []

    async def failing_once():
        if not failures:
            failures.append(1)
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True reading=False 0x1>; "
                               "the handler is closed")
        return await step()
    worker.step = failing_once
    await asyncio.wait_for(worker.run(), timeout=60)
    assert failures == [1]
    await control.flush(backend.aio, settings)
    assert len((await export.collect(backend.aio, settings)).sessions) == 2     # applied after the error

    other = Consumer(backend.aio, settings, "c1", until_idle=True, idle_advance=False)
    async def bug():
        raise RuntimeError("a bug")
    other.step = bug
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(other.run(), timeout=60)


async def test_a_lease_renewal_on_a_closed_connection_does_not_cost_the_other_leases(backend, settings):
    """Each lease is renewed on its own (a Redis Cluster shard failing over must not cost the leases
    on the others): uvloop's closed-connection RuntimeError on one partition counts as that shard
    being away, like a ConnectionError; the others are renewed, then the heartbeat reports it."""
    from shopstream.consumers.clock import ManualClock
    from shopstream.consumers.leases import Leases
    settings = settings.replace(partitions=2)
    await control.ensure_groups(backend.aio, settings)
    scripts = Scripts(backend.aio)
    leases = Leases(backend.aio, scripts, settings, "c", clock=ManualClock())
    await leases.heartbeat()
    run = scripts.run

    async def shard_0_closed(name, part, args):
        if name == "claim_lease" and part.p == 0:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
        return await run(name, part, args)
    scripts.run = shard_0_closed
    before = dict(leases.valid_until)
    leases.clock.advance(1.0)
    with pytest.raises(RuntimeError, match="handler is closed"):
        await leases.heartbeat()
    assert leases.valid_until[1] > before[1] and leases.valid_until[0] == before[0]   # 1 renewed, 0 kept
    assert leases.owned == {0, 1}

"""GDPR erasure: after `erase`, nothing of the user remains anywhere in Redis; later events are dropped."""

from __future__ import annotations

from engine import control, export
from engine.erase import erase, subject_hash
from engine.eventtime import format_us
from engine.keys import TX, Keys
from engine.producer import publish

from .helpers import consume_all, event

T0 = 1_793_520_000_000_000


async def everything(client) -> bytes:
    """Every key name and every value / stream entry in Redis, as one blob to search."""
    blob = []
    async for key in client.scan_iter(count=1000):
        blob.append(key)
        kind = (await client.type(key)).decode()
        if kind == "string":
            blob.append(await client.get(key) or b"")
        elif kind == "stream":
            for _, fields in await client.xrange(key):
                blob += [k + b"=" + v for k, v in fields.items()]
        elif kind == "zset":
            blob += await client.zrange(key, 0, -1)
        elif kind == "set" and b":ipu:" not in key:   # a HyperLogLog keeps hashes (fakeredis: a set)
            blob += list(await client.smembers(key))
        elif kind == "hash":
            blob += [k + b"=" + v for k, v in (await client.hgetall(key)).items()]
    return b"\n".join(blob)


async def test_erase_removes_every_trace_and_drops_later_events(backend, settings):
    victim, other = "vic{1}:tim ü", "bystander"
    raws = [event(victim, T0 + i * 300_000) for i in range(120)]          # state, alert, sessions
    raws += [event(other, T0 + i * 1_000_000) for i in range(20)]
    raws += [b'{"user_id": "vic{1}:tim \\u00fc", "event_type": 5, "timestamp": 1}']   # a dead letter
    payment = {"transaction_id": "t1", "user_id": victim, "amount": "9.99", "status": "failed",
               "card_fingerprint": "fp_x", "ip": "10.0.0.1", "country": "DE", "timestamp": format_us(T0 + 60_000_000)}
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, raws, settings)
    publish(backend.sync, [payment, {**payment, "transaction_id": "t2", "card_fingerprint": "fp_y"}], settings, TX)
    await consume_all(backend, settings)
    await control.flush(backend.aio, settings)
    publish(backend.sync, [event(victim, T0 + 3_600_000_000)], settings)   # a late event of the victim
    await consume_all(backend, settings)
    before = await everything(backend.aio)
    assert victim.encode() in before

    assert b":profile:" + victim.encode() in before and b":fails:" + victim.encode() in before

    report = await erase(backend.aio, settings, victim)
    assert report["sessions"] >= 1 and report["input_entries"] == 124
    assert report["alerts"] == 2 and report["alert_markers"] == 2     # events_per_minute and burst
    assert report["dead_letters"] == 1 and report["subject_sets"] == 3   # two cards' user sets, one IP sample

    after = await everything(backend.aio)
    assert victim.encode() not in after.replace(b":tomb:" + victim.encode(), b"")   # only the tombstone key
    assert other.encode() in after                                                   # others untouched
    audit = await backend.aio.xrange(Keys(settings.namespace, settings.partitions).audit)
    assert audit[-1][1][b"subject_sha256"] == subject_hash(victim).encode()
    assert victim.encode() not in b"".join(k + v for _, f in audit for k, v in f.items())

    # events of the user that arrive after the erasure are dropped, counted, and leave no trace
    publish(backend.sync, [event(victim, T0 + 7_200_000_000 + i) for i in range(3)], settings)
    await consume_all(backend, settings)
    await control.flush(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    assert victim not in {s["user_id"] for s in out.sessions}
    final = await everything(backend.aio)       # dropped events are deleted from the input too
    assert victim.encode() not in final.replace(b":tomb:" + victim.encode(), b"")
    state = await control.group_state(backend.aio, settings, list(range(settings.partitions)))
    assert all(pending == 0 for pending, _ in state.values())

"""GDPR erasure: after `erase`, nothing of the user remains anywhere in Redis; later events are dropped."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

from shopstream.engine import control, export
from shopstream.engine.erase import erase, subject_hmac
from shopstream.engine.eventtime import format_us
from shopstream.engine.keys import TX, USER_KEYS, USER_SETS, Keys
from shopstream.engine.producer import publish

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
    raws += [event(victim, T0 + 30_000_000, "login", ip="10.0.0.1", device="web", user_agent="Mozilla/5.0 X",
                   properties={"result": "failed"})]                     # the credential-stuffing sets
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
    assert report["sessions"] >= 1 and report["input_entries"] == 125
    assert report["alerts"] == 3 and report["alert_markers"] == 2     # events_per_minute, burst; the decision
    # two cards' user sets, one IP sample, the failed login's IP, device identity and /24, the card-ring /24
    assert report["dead_letters"] == 1 and report["subject_sets"] == 7

    after = await everything(backend.aio)
    assert victim.encode() not in after.replace(b":tomb:" + victim.encode(), b"")   # only the tombstone key
    assert other.encode() in after                                                   # others untouched
    keys = Keys(settings.namespace, settings.partitions)
    audit = await backend.aio.xrange(keys.audit)
    key = await backend.aio.get(keys.audit_key)                # made once, kept
    assert len(key) == 32 and audit[-1][1][b"subject_hmac"] == subject_hmac(key, victim).encode()
    record = b"".join(k + v for _, f in audit for k, v in f.items())
    assert victim.encode() not in record and hashlib.sha256(victim.encode()).hexdigest().encode() not in record

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


# -- ids designed to collide with key patterns -----------------------------------------------------
MIN = 60_000_000
COLLIDERS = ["b", "a:b", "x:b", "2001:db8::b", "*:b", "?:b", "[ab]:b", "\\:b", "b*", "[b]"]
FARM_IP = "2001:db8::b"                    # an IPv6 subject ending in ":b"


def collider_input(users, minute: int):
    """101 clicks of each user in one minute (events_per_minute + burst), all from FARM_IP (an
    ip_users alert on a subject ending in ':b'); per user three cards (card_testing on the user),
    a card shared by all, each from their own network (card_testing on the card), failed payments
    (fails:<user>)."""
    clicks = [event(u, T0 + minute * MIN + i * 100_000, ip=FARM_IP) for u in users for i in range(101)]
    payments = []
    for n, u in enumerate(users):
        for i, card in enumerate((f"own-{n}-1", f"own-{n}-2", "c:b")):
            payments.append({"transaction_id": f"t-{n}-{i}", "user_id": u, "amount": "1.00", "status": "failed",
                             "card_fingerprint": card, "ip": f"192.0.{n}.1", "country": "DE",
                             "timestamp": format_us(T0 + minute * MIN + i * 1_000_000)})
    return clicks, payments


async def snapshot(client) -> dict:
    """Every key -> (type, content) (streams: {entry id: fields})."""
    out = {}
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        if kind == "string":
            value = await client.get(key)
        elif kind == "stream":
            value = {i: tuple(sorted(f.items())) for i, f in await client.xrange(key)}
        elif kind == "zset":
            value = tuple(await client.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            value = frozenset(await client.smembers(key))
        elif kind == "hash":
            value = tuple(sorted((await client.hgetall(key)).items()))
        else:
            value = None
        out[key] = (kind, value)
    return out


def recording(client) -> list[str]:
    """Record the name of every command the client sends (outside pipelines)."""
    sent: list[str] = []
    inner = client.execute_command

    async def execute_command(*args, **options):
        sent.append(str(args[0]).upper())
        return await inner(*args, **options)
    client.execute_command = execute_command
    return sent


async def test_erasing_b_touches_no_key_of_a_colon_b_nor_of_subjects_ending_in_b(backend, settings):
    """One partition: every id shares it, so a pattern like fired:*:b would reach a:b's markers,
    the IPv6 IP's ip_users marker and ucards:<w>:a:b.  Erasing b must remove exactly b's keys,
    without SCAN, and a:b must not be alerted twice for a window after it."""
    settings = settings.replace(partitions=1)
    clicks, payments = collider_input(COLLIDERS, 0)
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, clicks, settings)
    publish(backend.sync, payments, settings, TX)
    await consume_all(backend, settings)
    before = await snapshot(backend.aio)
    first = await export.collect(backend.aio, settings)
    assert {a["subject"] for a in first.alerts if a["rule"] == "burst"} == set(COLLIDERS)

    sent = recording(backend.aio)
    await erase(backend.aio, settings, "b")
    assert "SCAN" not in sent and "KEYS" not in sent
    after = await snapshot(backend.aio)

    part = Keys(settings.namespace, 1).partition(0)
    prefix = part.prefix.encode()
    def of_b(key: bytes) -> bool:     # noqa: E306 - b's own keys, by their exact names
        rest = key[len(prefix):]
        return (rest in (b"user:b", b"profile:b", b"fails:b", b"tickets:b", b"ukeys:b", b"usets:b", b"ucz:b",
                         b"spend:b")
                or re.fullmatch(rb"(fired:[a-z_]+(/\d+)?:\d+:user|u(ips|ipx):\d+|risk:[a-z_]+:\d+:[a-z]+:\d+:.*)"
                                rb":b", rest, re.S) is not None)

    def only_b(key: bytes) -> bool:   # noqa: E306 - a subject's set whose only member was b (b's own card)
        kind, members = before[key]
        return kind == "set" and members == {b"b"} or kind == "zset" and {m for m, _ in members} == {b"b"}
    gone = set(before) - set(after)
    assert {k for k in gone if not of_b(k) and not only_b(k)} == set()
    for key in set(before) & set(after):
        (kind, old), (_, new) = before[key], after[key]
        if old == new:
            continue
        if kind == "set":
            assert old - new == {b"b"}, key
        elif kind == "zset":
            assert {m for m, _ in old} - {m for m, _ in new} == {b"b"}, key
        elif kind == "stream":                        # entries removed: b's input, alerts naming b
            for entry_id in set(old) - set(new):
                fields = dict(old[entry_id])
                assert (fields.get(b"user_id") == b"b" or b'"user_id":"b"' in fields.get(b"e", b"")
                        or b'"b"' in fields.get(b"evidence", b"")), (key, fields)
            for entry_id in set(new) - set(old):      # ... re-written without b
                assert b'"b"' not in b"".join(v for _, v in new[entry_id]) and dict(new[entry_id])[b"user_id"] != b"b"
        else:
            assert kind == "hash" and key.endswith(b":state"), key   # the tombstone horizon

    # more events of everyone in the same minute: nobody but b gets a second alert for it
    publish(backend.sync, [event(u, T0 + 59 * 1_000_000 + i, ip=FARM_IP) for u in COLLIDERS for i in range(5)],
            settings)
    await consume_all(backend, settings)
    out = await export.collect(backend.aio, settings)
    per_window = Counter((a["rule"], a["subject_kind"], a["subject"], a["window_start"], a["user_id"])
                         for a in out.alerts if a["rule"] != "decision")     # (decisions: one per action change)
    assert [k for k, n in per_window.items() if n > 1] == []
    assert {a["subject"] for a in out.alerts if a["rule"] == "burst"} == set(COLLIDERS) - {"b"}
    assert "b" not in {a["user_id"] for a in out.alerts}


async def test_the_audit_is_keyed_by_the_setting_or_one_random_key_per_namespace(backend, settings):
    """A bare SHA-256 of a guessable id can be reversed by hashing guesses: the audit keeps an
    HMAC whose key is the audit_key setting, or 32 random bytes made once per namespace."""
    keys = Keys(settings.namespace, settings.partitions)
    await erase(backend.aio, settings, "u1")
    await erase(backend.aio, settings, "u2")
    made = await backend.aio.get(keys.audit_key)
    await erase(backend.aio, settings.replace(audit_key="s3cret"), "u1")
    a1, a2, a3 = [f[b"subject_hmac"].decode() for _, f in await backend.aio.xrange(keys.audit)]
    assert (a1, a2) == (subject_hmac(made, "u1"), subject_hmac(made, "u2"))
    assert a3 == subject_hmac(b"s3cret", "u1") != a1
    assert hashlib.sha256(b"u1").hexdigest() not in (a1, a3)


async def test_erase_sends_no_scan_to_a_real_server_full_of_other_keys(real, settings):
    """Counted by the server itself (INFO commandstats: pipelines included): erasing a user reads
    its indexes, whatever else the keyspace holds."""
    clicks, payments = collider_input(["b", "a:b", "2001:db8::b"], 0)
    await control.ensure_groups(real.aio, settings)
    publish(real.sync, clicks, settings)
    publish(real.sync, payments, settings, TX)
    await consume_all(real, settings)
    for chunk in range(20):                  # 100,000 keys of nobody
        real.sync.mset({f"filler:{chunk}:{i}:b": 1 for i in range(5000)})
    real.sync.config_resetstat()
    report = await erase(real.aio, settings, "b")
    stats = real.sync.info("commandstats")
    # markers: events_per_minute, burst, failed_payments, card_testing (user) and the shared card's risk;
    # sets: the users of three cards, of the IP, of the user's payment IP and the card-ring /24
    assert report["alert_markers"] == 5 and report["subject_sets"] == 6
    assert not {"cmdstat_scan", "cmdstat_keys"} & set(stats), sorted(stats)
    assert sum(v["calls"] for v in stats.values()) < 200


async def test_an_erasure_index_lives_as_long_as_every_key_it_lists(backend, settings):
    clicks, payments = collider_input(["b", "a:b"], 0)
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, clicks, settings)
    publish(backend.sync, payments, settings, TX)
    await consume_all(backend, settings)
    checked = 0
    for part in Keys(settings.namespace, settings.partitions).all_partitions():
        for user in ("b", "a:b"):
            for index in (part.key(USER_KEYS) + user, part.key(USER_SETS) + user):
                for key in await backend.aio.smembers(index):
                    index_ttl = await backend.aio.pttl(index)       # first: the clock only runs on
                    assert 0 < await backend.aio.pttl(key) <= index_ttl, (index, key)
                    checked += 1
    assert checked >= 2 * 9          # markers (4 + card risk), ucards, uips; sets of 3 cards and the IP

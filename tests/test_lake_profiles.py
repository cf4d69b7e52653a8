"""The profile changelog: one record per changed profile per script call (lua/includes/profile.lua
save_profiles) in ``<prefix>profiles``, archived into ``profile_changes``, read by ``dim_customer``,
and erased from Redis and the lake."""

from __future__ import annotations

import json
import time

import pytest

from shopstream.engine import control
from shopstream.engine.batch import apply_args, decode_entries
from shopstream.engine.erase import erase
from shopstream.engine.eventtime import format_us
from shopstream.engine.keys import PROFILES, TX, Keys
from shopstream.engine.producer import publish
from shopstream.engine.rules import Rules
from shopstream.engine.scripts import Scripts

from shopstream.engine.export import profile_fields

from .helpers import consume_all, event

T0 = 1_793_520_000_000_000


def payment(tx_id: str, user: str, ts_us: int, amount: str = "10.00", status: str = "completed") -> dict:
    return {"transaction_id": tx_id, "user_id": user, "amount": amount, "currency": "USD", "status": status,
            "card_fingerprint": f"fp-{user}", "ip": "10.0.0.1", "country": "DE", "timestamp": format_us(ts_us)}


def changelog(client, settings) -> list[dict]:
    """Every record of every partition's profile changelog, fields decoded."""
    out = []
    for part in Keys(settings.namespace, settings.partitions).all_partitions():
        for _, fields in client.xrange(part.key(PROFILES)):
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


async def apply_pending_tx(backend, settings) -> int:
    """One apply_batch call per partition for the transactions not yet read; returns the calls made."""
    keys, scripts, calls = Keys(settings.namespace, settings.partitions), Scripts(backend.aio), 0
    for part in keys.all_partitions():
        await backend.aio.set(part.key("lease"), "me")
        reply = await backend.aio.xreadgroup(settings.group, "me", {part.key(TX): ">"}, count=10_000)
        if not reply:
            continue
        d = decode_entries([(TX, e) for e in reply[0][1]], part.p, time.time_ns() // 1000, settings)
        await scripts.run("apply_batch", part, apply_args(settings, "me", time.time_ns() // 1000,
                                                          Rules().to_lua(), d.events))
        calls += 1
    return calls


async def test_one_changelog_record_per_changed_profile_per_apply_call(backend, settings):
    await control.ensure_groups(backend.aio, settings)
    # one call: u1 pays twice and u2 once -> one record each, u1's with both payments summed
    publish(backend.sync, [payment("t1", "u1", T0), payment("t2", "u1", T0 + 5_000_000, "2.50"),
                           payment("t3", "u2", T0 + 1_000_000, "7.00", "failed")], settings, TX)
    assert await apply_pending_tx(backend, settings) >= 1
    records = changelog(backend.sync, settings)
    assert sorted(r["user_id"] for r in records) == ["u1", "u2"]
    by_user = {r["user_id"]: r for r in records}
    u1 = json.loads(by_user["u1"]["changes"])
    assert (u1["orders"], u1["spend_minor"], u1["currency"]) == ("2", "1250", "USD")
    assert u1["first_seen"] == str(T0) and u1["last_seen"] == str(T0 + 5_000_000)   # µs: Python formats dates
    assert int(by_user["u1"]["ts"]) == T0 + 5_000_000          # the latest event time behind the change
    assert json.loads(by_user["u2"]["changes"])["failed_payments"] == "1"
    # a retried payment changes no profile: no record; a new one of u1's: one record, its changed fields only
    publish(backend.sync, [payment("t1", "u1", T0)], settings, TX)
    await apply_pending_tx(backend, settings)
    assert len(changelog(backend.sync, settings)) == 2
    publish(backend.sync, [payment("t4", "u1", T0 + 9_000_000, "1.00")], settings, TX)
    await apply_pending_tx(backend, settings)
    records = changelog(backend.sync, settings)
    assert [r["user_id"] for r in records[2:]] == ["u1"] and len(records) == 3
    assert json.loads(records[2]["changes"]) == {"orders": "3", "spend_minor": "1350", "currency": "USD",
                                                 "last_seen": str(T0 + 9_000_000)}


async def test_a_closing_session_is_one_record_and_erasure_removes_the_users_records(backend, settings):
    await control.ensure_groups(backend.aio, settings)
    publish(backend.sync, [event(u, T0 + i * 1_000_000) for i in range(5) for u in ("victim", "other")], settings)
    await consume_all(backend, settings)
    assert changelog(backend.sync, settings) == []            # clicks reach the profile when the session closes
    await control.flush(backend.aio, settings)                # advance_watermark closes both sessions
    records = changelog(backend.sync, settings)
    assert sorted(r["user_id"] for r in records) == ["other", "victim"]
    assert json.loads(records[0]["changes"])["sessions"] == "1"
    report = await erase(backend.aio, settings, "victim")
    assert report["profile_changes"] == 1
    assert [r["user_id"] for r in changelog(backend.sync, settings)] == ["other"]


async def test_profile_changes_table_dimension_and_erasure(backend, settings, tmp_path):
    pytest.importorskip("deltalake")
    from shopstream.engine.erase import audit_key_sync
    from shopstream.engine.lake.archiver import Archiver
    from shopstream.engine.lake.dimensions import rebuild
    from shopstream.engine.lake.erasure import erase_from_lake
    from shopstream.engine.lake.sql import connect
    from shopstream.engine.lake.store import Lake
    from tests.test_lake_archive import run_engine
    from tests.test_lake_erasure import VICTIM, traces, victim_input

    await control.ensure_groups(backend.aio, settings)
    victim_input(backend.sync, settings)
    await run_engine(backend, settings)
    # a retried payment of b1's: bronze has it twice; the profile (and its changelog) and dim_customer count it once
    publish(backend.sync, [{"transaction_id": "t-b1-0", "user_id": "b1", "order_id": "o-b1-0", "amount": "99.99",
                            "currency": "USD", "status": "completed", "country": "US",
                            "timestamp": "2026-11-02T10:14:30Z"}], settings, TX)
    await consume_all(backend, settings)
    expected = changelog(backend.sync, settings)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(backend.sync, settings, lake, until_idle=True).run()
    con = connect(lake)
    rows = con.sql("SELECT user_id, changes, event_ts FROM profile_changes").fetchall()
    canon = lambda text: json.dumps(json.loads(text), sort_keys=True)  # noqa: E731
    in_lake = lambda text: json.dumps(profile_fields(json.loads(text)))          # noqa: E731  (times as ISO)
    assert sorted((u, canon(c)) for u, c, _ in rows) == sorted((r["user_id"], canon(in_lake(r["changes"])))
                                                               for r in expected)
    assert {u for u, _, _ in rows} == {"a1", "a2", "b1", "b2", "bot", VICTIM} and all(ts for _, _, ts in rows)
    assert con.sql("SELECT count(*) FROM bronze_tx WHERE transaction_id = 't-b1-0'").fetchall() == [(2,)]

    rebuild(lake)
    con = connect(lake)
    current = {r[0]: r[1:] for r in con.sql("SELECT user_id, lifetime_orders, spend_band, country, devices "
                                            "FROM dim_customer WHERE is_current").fetchall()}
    assert current["b1"] == (1, "<100", "US", ["android"])              # the retry is not a second order
    assert current["a1"][:2] == (1, "<100") and current["a2"][:2] == (0, "none") and current["b2"][:2] == (0, "none")

    report = erase_from_lake(lake, VICTIM, "req-p", audit_key_sync(backend.sync, settings))
    assert report["tables"]["profile_changes"]["deleted"] >= 1
    assert connect(lake).sql(f"SELECT count(*) FROM profile_changes WHERE user_id = '{VICTIM}'").fetchall() == [(0,)]
    assert traces(tmp_path / "lake", VICTIM) == []

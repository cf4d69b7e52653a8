"""Erasure through the lake: after erase_from_lake, no value of any Parquet file left in the lake
folder (data files and the Delta log's checkpoints, decoded with pyarrow) and no line of the
Delta log mentions the user; everyone else's rows are still there."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

pytest.importorskip("deltalake")

from shopstream.engine import control  # noqa: E402
from shopstream.engine.keys import Keys  # noqa: E402
from shopstream.engine.lake import tables  # noqa: E402
from shopstream.engine.lake.archiver import Archiver  # noqa: E402
from shopstream.engine.erase import audit_key_sync, subject_hmac  # noqa: E402
from shopstream.engine.lake.erasure import ERASED, erase_from_lake  # noqa: E402
from shopstream.engine.lake.sql import connect  # noqa: E402
from shopstream.engine.lake.store import Lake  # noqa: E402
from shopstream.engine.producer import publish  # noqa: E402
from tests import lakedata  # noqa: E402
from tests.helpers import consume_all  # noqa: E402
from tests.lakedata import run_engine, traces  # noqa: E402

VICTIM = "victim-9q7"


def victim_input(client, settings) -> None:
    """The victim's clicks (a burst: their own alerts), a payment, a ticket, a record that is not
    valid (a dead letter), and an IP alert about someone else that lists them in its evidence."""
    clicks = [{"user_id": VICTIM, "event_type": "page_view", "event_id": f"v{n}", "device": "web",
               "timestamp": f"{lakedata.DAY}T13:00:{n * 0.5:06.3f}Z", "country": "DE"} for n in range(110)]
    publish(client, clicks + [{"user_id": VICTIM, "event_type": 7, "timestamp": f"{lakedata.DAY}T13:05:00Z"}],
            settings)
    publish(client, [{"transaction_id": "t-v", "user_id": VICTIM, "amount": "9.99", "status": "completed",
                      "timestamp": f"{lakedata.DAY}T13:02:00Z", "country": "DE"}], settings, "tx")
    publish(client, [{"ticket_id": "k-v", "user_id": VICTIM, "status": "open", "category": "privacy",
                      "created_at": f"{lakedata.DAY}T13:03:00Z"}], settings, "support")
    part = Keys(settings.namespace, settings.partitions).partition(0)
    client.xadd(part.key("alerts"), {"rule": "ip_users", "severity": "high", "subject_kind": "ip",
                                     "subject": "10.9.9.9", "user_id": VICTIM, "window_start": 1793620800000000,
                                     "count": 2, "threshold": 1, "detected_at": 1793620800000000, "entry_id": "",
                                     "evidence": json.dumps({"users": ["a1", VICTIM, f"3:{VICTIM}"]})})


async def test_erasure_leaves_no_trace_of_the_user_in_any_file(backend, settings, tmp_path):
    await control.ensure_groups(backend.aio, settings)
    lakedata.publish_all(backend.sync, settings)
    victim_input(backend.sync, settings)
    await consume_all(backend, settings)
    await control.flush(backend.aio, settings)
    lake_dir = tmp_path / "lake"
    lake = Lake(str(lake_dir))
    Archiver(backend.sync, settings, lake, commit_rows=40, read_count=30, until_idle=True).run()   # several files per table
    for table in tables.TABLES:
        dt = lake.open(table)
        dt.create_checkpoint()                       # a checkpoint (Parquet) lists the files before erasure
    before = {t.name: lake.read(t).num_rows for t in tables.TABLES}
    assert len(traces(lake_dir, VICTIM)) > 5                    # the check can fail: the user is everywhere now
    assert connect(lake).sql(f"SELECT count(*) FROM alerts WHERE user_id = '{VICTIM}' AND subject_kind = 'user'"
                             ).fetchall()[0][0] >= 1
    assert connect(lake).sql(f"SELECT count(*) FROM dead_letters WHERE payload LIKE '%{VICTIM}%'").fetchall() == [(1,)]

    # an archiver killed between writing a file and committing it left an orphan holding the user's
    # rows two hours ago; one a live writer is committing right now holds someone else's
    victim_file = next(f for f in lake.files("bronze_tx") if VICTIM in str(pq.read_table(f).to_pylist()))
    dead = Path(victim_file).with_name("part-00000-dead-writer.zstd.parquet")
    dead.write_bytes(Path(victim_file).read_bytes())
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    inflight = lake_dir / "minutes" / "dt=2026-11-02" / "part-00000-in-flight.zstd.parquet"
    inflight.write_bytes(Path(lake.files("minutes")[0]).read_bytes())

    report = erase_from_lake(lake, VICTIM, "req-42", audit_key_sync(backend.sync, settings))

    assert not dead.exists() and inflight.exists() and report["orphans_removed"] >= 1
    assert traces(lake_dir, VICTIM) == []
    assert report["tables"]["bronze_clicks"]["deleted"] == 111 and report["tables"]["alerts"]["redacted"] == 1
    after = {t.name: lake.read(t).num_rows for t in tables.TABLES}
    assert before["bronze_clicks"] - after["bronze_clicks"] == 111
    assert before["bronze_tx"] - after["bronze_tx"] == 1 and before["bronze_support"] - after["bronze_support"] == 1
    assert before["dead_letters"] - after["dead_letters"] == 1 and after["minutes"] == before["minutes"]
    (ip_alert,) = [a for a in lake.read("alerts").to_pylist() if a["subject_kind"] == "ip"]
    assert ip_alert["user_id"] == ERASED and msgspec.json.decode(ip_alert["evidence"]) == {"users": ["a1"]}
    con = connect(lake)                                           # everyone else is still there
    assert con.sql("SELECT user_id, count(*) FROM bronze_clicks GROUP BY 1 ORDER BY 1").fetchall() == [
        ("a1", 5), ("a2", 3), ("b1", 5), ("b2", 1), ("bot", 131), (None, 1)]
    erasures = lake_dir / "erasures"
    logged = [r for f in erasures.rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    key = audit_key_sync(backend.sync, settings)                  # the namespace's audit key, as Redis's audit
    assert {r["subject_hmac"] for r in logged} == {subject_hmac(key, VICTIM)} and {r["request_id"] for r in logged} == {"req-42"}
    # idempotent
    assert erase_from_lake(lake, VICTIM, "req-42", audit_key_sync(backend.sync, settings))["rows_deleted"] == 0


async def test_the_archiver_drops_rows_of_a_user_erased_after_it_read_them(backend, settings, tmp_path):
    """An entry the archiver read before the Redis erasure deleted it reaches no table."""
    await run_engine(backend, settings)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(backend.sync, settings, lake, until_idle=True).run()
    victim_input(backend.sync, settings)
    archiver = Archiver(backend.sync, settings, lake, until_idle=True)
    archiver.start()
    archiver.read_round()                                     # the victim's entries are in memory now
    erase_from_lake(lake, VICTIM, "req-43", audit_key_sync(backend.sync, settings))
    archiver.commit()
    assert archiver.counters.dropped >= 113
    assert traces(tmp_path / "lake", VICTIM) == []
    # the positions moved on all the same: nothing is pending, a restart writes nothing
    for source in tables.sources(Keys(settings.namespace, settings.partitions)):
        assert backend.sync.xpending(source.stream, settings.archive_group)["pending"] == 0
    assert Archiver(backend.sync, settings, lake, until_idle=True).run().rows == 0


async def test_erasure_of_a_short_id_spares_lookalikes_and_the_catalog(backend, settings, tmp_path):
    """Erasing "home" (a user id that is also a catalog category, and a prefix of "homer") removes
    that user's rows only."""
    await control.ensure_groups(backend.aio, settings)
    lakedata.publish_all(backend.sync, settings)         # product P1 has category "home"
    publish(backend.sync, [{"user_id": u, "event_type": "page_view", "timestamp": f"{lakedata.DAY}T15:00:00Z"}
                           for u in ("home", "homer")], settings)
    part = Keys(settings.namespace, settings.partitions).partition(1)
    backend.sync.xadd(part.key("alerts"), {"rule": "ip_users", "severity": "medium", "subject_kind": "ip",
                                           "subject": "10.1.1.1", "user_id": "homer", "window_start": 1793620800000000,
                                           "count": 2, "threshold": 1, "detected_at": 1793620800000000,
                                           "entry_id": "", "evidence": json.dumps({"users": ["home", "homer"]})})
    lake = Lake(str(tmp_path / "lake"))
    Archiver(backend.sync, settings, lake, until_idle=True).run()
    report = erase_from_lake(lake, "home", "req-7", audit_key_sync(backend.sync, settings))
    assert report["tables"] == {"bronze_clicks": {"deleted": 1, "redacted": 0},
                                "alerts": {"deleted": 0, "redacted": 1}}
    con = connect(lake)
    assert con.sql("SELECT count(*) FROM bronze_catalog WHERE category = 'home'").fetchall() == [(1,)]
    assert con.sql("SELECT count(*) FROM bronze_clicks WHERE user_id = 'homer'").fetchall() == [(1,)]
    (alert,) = con.sql("SELECT user_id, evidence FROM alerts WHERE subject = '10.1.1.1'").fetchall()
    assert alert == ("homer", '{"users":["homer"]}')


async def test_the_erase_command_reaches_redis_and_the_lake_under_one_request_id(real, settings, tmp_path,
                                                                                 monkeypatch, capsys):
    from shopstream.engine.cli import main
    await run_engine(real, settings)
    victim_input(real.sync, settings)
    await consume_all(real, settings)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(real.sync, settings, lake, until_idle=True).run()
    assert traces(tmp_path / "lake", VICTIM)
    monkeypatch.setenv("SHOPSTREAM_LAKE_URI", lake.uri)
    await asyncio.to_thread(main, ["erase", VICTIM, "--redis-url", real.url, "--partitions", str(settings.partitions)])
    out = capsys.readouterr().out
    assert "from the lake" in out and traces(tmp_path / "lake", VICTIM) == []
    (audit,) = [fields for _, fields in real.sync.xrange(Keys(settings.namespace, settings.partitions).audit)]
    logged = [r for f in (tmp_path / "lake" / "erasures").rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert {r["request_id"] for r in logged} == {audit[b"request_id"].decode()} and audit[b"request_id"]
    assert {r["subject_hmac"] for r in logged} == {audit[b"subject_hmac"].decode()}

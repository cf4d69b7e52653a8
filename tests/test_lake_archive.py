"""The archiver: every entry of every stream in the lake exactly once, across crashes."""

from __future__ import annotations

import pytest

pytest.importorskip("deltalake")

from shopstream.engine.keys import Keys  # noqa: E402
from shopstream.engine.lake import tables  # noqa: E402
from shopstream.engine.lake.archiver import Archiver  # noqa: E402
from shopstream.engine.lake.store import Lake  # noqa: E402
from tests import lakedata  # noqa: E402
from tests.lakedata import lake_entries, run_engine, stream_entries  # noqa: E402


async def test_every_stream_archived_once_with_its_parsed_columns(backend, settings, tmp_path):
    await run_engine(backend, settings)
    lake = Lake(str(tmp_path / "lake"))
    done = Archiver(backend.sync, settings, lake, commit_rows=40, read_count=20, until_idle=True).run()
    expected = stream_entries(backend.sync, settings)
    assert lake_entries(lake) == expected
    assert done.rows == sum(expected.values()) and done.commits > len(tables.TABLES)   # several commits per table
    per_table = {t.name: lake.read(t).num_rows for t in tables.TABLES}
    assert per_table["bronze_clicks"] == len(lakedata.clicks()) + 1
    assert per_table["bronze_tx"] == 4 and per_table["bronze_support"] == 1 and per_table["bronze_catalog"] == 2
    assert per_table["sessions"] == 6 and per_table["dead_letters"] == 1 and per_table["alerts"] >= 1
    tx = {r["transaction_id"]: r for r in lake.read("bronze_tx").to_pylist()}
    assert tx["t-a2-0"]["status"] == "failed" and tx["t-a2-0"]["amount"] == "12.50"
    assert str(tx["t-a2-0"]["dt"]) == lakedata.DAY
    a1 = [s for s in lake.read("sessions").to_pylist() if s["user_id"] == "a1"]
    assert a1[0]["event_count"] == 5 and '"purchase":1' in a1[0]["counts"]
    # nothing left unacknowledged, and a second run finds nothing to do
    for source in tables.sources(Keys(settings.namespace, settings.partitions)):
        assert backend.sync.xpending(source.stream, settings.archive_group)["pending"] == 0
    again = Archiver(backend.sync, settings, lake, until_idle=True).run()
    assert again.rows == 0 and lake_entries(lake) == expected


async def test_a_crash_between_commit_and_xack_writes_nothing_twice(backend, settings, tmp_path):
    """The rows and positions are committed, the XACK never happens: the restart claims the
    pending entries, finds them at or below the lake's positions, acknowledges, skips them."""
    await run_engine(backend, settings)
    lake = Lake(str(tmp_path / "lake"))
    crashing = Archiver(backend.sync, settings, lake, commit_rows=10_000, until_idle=True)

    def crash(ids):
        raise SystemExit("killed after the commit, before the XACK")
    crashing._ack = crash
    crashing.start()
    crashing.read_round()
    with pytest.raises(SystemExit):
        crashing.commit()
    assert sum(lake_entries(lake).values()) > 0            # the first table's commit made it
    restarted = Archiver(backend.sync, settings, lake, until_idle=True).run()
    assert restarted.skipped > 0
    assert lake_entries(lake) == stream_entries(backend.sync, settings)


async def test_instances_split_the_streams(backend, settings, tmp_path):
    await run_engine(backend, settings)
    lake = Lake(str(tmp_path / "lake"))
    mine = [tables.sources(Keys(settings.namespace, settings.partitions), i, 3) for i in range(3)]
    streams = [s.stream for group in mine for s in group]
    assert len(streams) == len(set(streams)) == len(tables.sources(Keys(settings.namespace, settings.partitions)))
    for i in range(3):
        Archiver(backend.sync, settings, lake, instance=i, instances=3, until_idle=True).run()
    assert lake_entries(lake) == stream_entries(backend.sync, settings)


def test_positions_encode_entry_ids_in_order():
    from shopstream.engine.lake.positions import from_version, to_version
    ids = ["0-0", "0-1", "1-0", "1793520000000-0", "1793520000000-1048575", "1793520000001-0"]
    versions = [to_version(i) for i in ids]
    assert versions == sorted(versions) and [from_version(v) for v in versions] == ids
    assert versions[-1] < 2**63
    with pytest.raises(ValueError):
        to_version("1-1048576")


async def test_archiver_metrics(backend, settings, tmp_path):
    from prometheus_client import generate_latest

    from shopstream.engine.lake.metrics import ArchiverMetrics
    await run_engine(backend, settings)
    metrics = ArchiverMetrics()
    lake = Lake(str(tmp_path / "lake"))
    archiver = Archiver(backend.sync, settings, lake, until_idle=True, metrics=metrics, lag_every=0)
    archiver.start()
    lag = archiver.lag()
    assert lag["bronze_clicks"] == len(lakedata.clicks()) + 1 and lag["bronze_tx"] == 4
    archiver.run()
    text = generate_latest(metrics.registry).decode()
    assert 'shopstream_archive_rows_total{table="bronze_tx"} 4.0' in text
    assert 'shopstream_archive_lag_entries{table="bronze_clicks"} 0.0' in text     # measured after the last read
    assert "shopstream_archive_commit_duration_seconds_count 1.0" in text
    assert archiver.lag() == {t.name: 0 for t in tables.TABLES}


async def test_instances_commit_to_the_same_tables_at_once(real, settings, tmp_path):
    """Three archivers at the same time, many small commits each to the same Delta tables: the
    optimistic commits retry and every entry lands once."""
    import threading

    import redis
    from shopstream.engine.producer import publish
    await run_engine(real, settings)
    publish(real.sync, [{"user_id": f"x{i}", "event_type": "page_view", "timestamp": "2026-11-02T12:00:00Z"}
                        for i in range(3000)], settings)
    lake = Lake(str(tmp_path / "lake"))
    lake.ensure_tables()
    errors = []

    def archive(i):
        try:
            Archiver(redis.Redis.from_url(real.url), settings, lake, instance=i, instances=3, commit_rows=100,
                     read_count=50, until_idle=True).run()
        except Exception as exc:            # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=archive, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert lake_entries(lake) == stream_entries(real.sync, settings)
    assert lake.open("bronze_clicks").version() > 20                # many interleaved commits

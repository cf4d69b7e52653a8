"""Compaction: a day's small files become one per table; same rows, positions kept, and the
archiver goes on exactly once after it."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("deltalake")

from shopstream.engine.lake.archiver import Archiver  # noqa: E402
from shopstream.engine.lake.compaction import compact  # noqa: E402
from shopstream.engine.lake.store import Lake, day_of  # noqa: E402
from shopstream.engine.producer import publish  # noqa: E402
from tests import lakedata  # noqa: E402
from tests.lakedata import lake_entries, run_engine, stream_entries  # noqa: E402


async def test_compaction_of_a_day(backend, settings, tmp_path):
    await run_engine(backend, settings)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(backend.sync, settings, lake, commit_rows=20, read_count=10, until_idle=True).run()
    before = lake_entries(lake)
    files = Counter(day_of(f) for f in lake.files("bronze_clicks"))
    assert files[lakedata.DAY] > 5
    done = compact(lake, lakedata.DAY)
    assert done["bronze_clicks"]["removed"] == files[lakedata.DAY] and done["bronze_clicks"]["added"] == 1
    assert lake_entries(lake) == before
    assert [day_of(f) for f in lake.files("bronze_clicks")].count(lakedata.DAY) == 1
    publish(backend.sync, [{"user_id": "late-comer", "event_type": "page_view",
                            "timestamp": f"{lakedata.DAY}T20:00:00Z"}], settings)
    again = Archiver(backend.sync, settings, lake, until_idle=True).run()
    assert again.rows == 1 and again.skipped == 0          # positions survived the compaction
    assert lake_entries(lake) == stream_entries(backend.sync, settings)
    assert compact(lake, "2001-01-01") == {}


async def test_compact_command(backend, settings, tmp_path, capsys):
    from shopstream.engine.cli import main
    await run_engine(backend, settings)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(backend.sync, settings, lake, commit_rows=20, read_count=10, until_idle=True).run()
    main(["compact", "--lake", lake.uri, "--date", lakedata.DAY])
    assert "bronze_clicks" in capsys.readouterr().out
    main(["compact", "--lake", lake.uri])
    assert capsys.readouterr().out.strip() == "nothing to compact"


async def test_archive_throughput_measure(backend, settings, tmp_path):
    from shopstream.engine.lake.benchlake import archive_throughput, build, synthetic_clicks
    await run_engine(backend, settings)
    got = archive_throughput(backend.sync, settings, tmp_path / "bench")
    assert got["rows"] == sum(stream_entries(backend.sync, settings).values()) and got["rows_per_s"] > 0
    assert 0 < got["bytes_per_click_event"] < 400
    lake = Lake(str(tmp_path / "synthetic"))
    build(lake, 5000, users=50, chunk=2000)
    assert lake.read("bronze_clicks").num_rows == 5000
    assert synthetic_clicks(0, 3, 10, 3).column("dt").to_pylist()[0].isoformat() == "2026-11-02"

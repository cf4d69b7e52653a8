"""DuckDB over the lake: the example queries of docs/data-model.md, run on a lake built from a
known input (tests/lakedata.py), with their results asserted; and `shopstream sql`."""

from __future__ import annotations

import asyncio
import re
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("deltalake")

from shopstream.engine import control  # noqa: E402
from shopstream.engine.cli import main  # noqa: E402
from shopstream.engine.lake.archiver import Archiver  # noqa: E402
from shopstream.engine.lake.sql import connect  # noqa: E402
from shopstream.engine.lake.store import Lake  # noqa: E402
from shopstream.engine.producer import publish  # noqa: E402
from shopstream.engine.settings import Settings  # noqa: E402
from tests import lakedata  # noqa: E402
from tests.conftest import fake_clients  # noqa: E402
from tests.helpers import consume_all  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "data-model.md"


def doc_queries() -> dict[str, str]:
    """name -> SQL of each ```sql block of the lake section (its first line: ``-- name: …``)."""
    section = DOC.read_text().split("## The lake (engine/lake)", 1)[1]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    return {re.match(r"-- (\w+):", b).group(1): b for b in blocks}     # as_of: tests/test_lake_dimensions.py


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    settings = Settings(partitions=4, heartbeat_ms=50, lease_ttl_ms=600, block_ms=20, idle_timeout_ms=0,
                        metrics_port=None, batch_size=200)
    sync, aio = fake_clients()
    backend = SimpleNamespace(sync=sync, aio=aio, kind="fake")

    async def engine():
        await control.ensure_groups(aio, settings)
        lakedata.publish_all(sync, settings)
        await consume_all(backend, settings)
        await control.flush(aio, settings)
    asyncio.run(engine())
    publish(sync, [{"user_id": user, "event_type": "page_view", "timestamp": day, "device": "ios", "country": country}
                   for user, day, country in (("a1", "2026-11-03T09:00:00Z", "FR"), ("a1", "2026-11-04T09:00:00Z", "FR"),
                                              ("b2", "2026-11-04T10:00:00Z", "US"))], settings)   # users coming back
    lake = Lake(str(tmp_path_factory.mktemp("sql") / "lake"))
    Archiver(sync, settings, lake, commit_rows=50, read_count=25, until_idle=True).run()   # several files per table
    return lake


def run(lake: Lake, name: str) -> list[tuple]:
    return connect(lake).sql(doc_queries()[name]).fetchall()


def at(hhmmss: str) -> datetime:
    return datetime.fromisoformat(f"{lakedata.DAY}T{hhmmss}+00:00").astimezone(timezone.utc)


def test_the_doc_has_the_queries_this_file_checks():
    assert set(doc_queries()) == {"funnel", "history", "fraud_rate", "cohort_retention", "payments", "conversion",
                                  "as_of", "profile_as_of"}


def test_funnel_by_device(lake):
    assert run(lake, "funnel") == [("android", 1, 1, 1, 1), ("ios", 1, 1, 1, 1), ("web", 3, 1, 0, 0)]


def test_a_users_history(lake):
    rows = [(when.astimezone(timezone.utc), source, what) for when, source, what in run(lake, "history")]
    assert rows == [(at("10:10:00"), "click", "page_view"), (at("10:10:00"), "session", "5 events"),
                    (at("10:11:00"), "click", "product_view"), (at("10:12:00"), "click", "add_to_cart"),
                    (at("10:13:00"), "click", "checkout"), (at("10:14:00"), "click", "purchase"),
                    (at("10:14:30"), "payment", "completed 99.99 USD"), (at("12:00:00"), "ticket", "delivery (open)")]


def test_fraud_rate_by_country(lake):
    assert run(lake, "fraud_rate") == [("FR", 2, 0, 0.0), ("US", 3, 1, 0.333)]
    flagged = connect(lake).sql("SELECT DISTINCT user_id FROM alerts").fetchall()
    assert flagged == [("bot",)]


def test_cohort_retention(lake):
    day = date.fromisoformat(lakedata.DAY)
    assert run(lake, "cohort_retention") == [(day, 0, 5, 1.0), (day, 1, 1, 0.2), (day, 2, 2, 0.4)]


def test_payments_by_country(lake):
    assert run(lake, "payments") == [("FR", 1, Decimal("30.00"), 0.5), ("US", 2, Decimal("104.99"), 0.0)]


def test_conversion_from_sessions(lake):
    assert run(lake, "conversion") == [(6, 2)]


def test_views_read_the_files_in_place(lake):
    """No copy: each view reads exactly the Parquet files of the table's current snapshot."""
    con = connect(lake)
    for name in ("bronze_clicks", "sessions", "alerts"):
        ((definition,),) = con.execute(f"SELECT sql FROM duckdb_views() WHERE view_name = '{name}'").fetchall()
        assert set(re.findall(r"'([^']+\.parquet)'", definition)) == set(lake.files(name))
    assert len(lake.files("bronze_clicks")) > 1
    assert con.sql("SELECT count(*) FROM late").fetchall() == [(0,)]          # an empty table still has its view


def test_sql_command(lake, capsys):
    main(["sql", "SELECT user_id, event_count FROM sessions WHERE user_id LIKE 'a%' AND dt = '2026-11-02' ORDER BY 1",
          "--lake", lake.uri, "--csv"])
    assert capsys.readouterr().out.splitlines() == ["user_id,event_count", "a1,5", "a2,3"]


def test_sql_command_reports_a_bad_query_in_one_line(lake):
    with pytest.raises(SystemExit, match='error: Binder Error: Referenced column "nope" not found'):
        main(["sql", "SELECT nope FROM alerts", "--lake", lake.uri])


def test_sql_command_without_a_lake(tmp_path):
    with pytest.raises(SystemExit, match="error: no lake at"):
        main(["sql", "SELECT 1", "--lake", str(tmp_path / "nowhere")])


def test_a_profile_as_of_a_time_from_the_changelog(lake):
    """a1: five clicks from 10:00 (ios, FR, one product view of a "home" product), one session, a
    completed payment of 30.00 USD at 10:04:30; the day after (a1 comes back) is not "as of" the day."""
    profile = dict(run(lake, "profile_as_of"))
    day = lakedata.DAY
    assert {k: profile.get(k) for k in ("events", "sessions", "orders", "spend_minor", "currency", "category:home",
                                        "device:ios", "country:FR", "first_seen", "last_seen")} == {
        "events": "5", "sessions": "1", "orders": "1", "spend_minor": "3000", "currency": "USD", "category:home": "1",
        "device:ios": f"{day}T10:00:00.000000Z", "country:FR": f"{day}T10:00:00.000000Z",
        "first_seen": f"{day}T10:00:00.000000Z", "last_seen": f"{day}T10:04:30.000000Z"}

"""SCD2 dimensions: dim_customer versions on each change of country, devices, orders, spend
band, risk band; dim_product on each catalog change; the "as of" join of data-model.md;
rebuilt without an erased user."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

pytest.importorskip("deltalake")

from shopstream.engine import catalog, control  # noqa: E402
from shopstream.engine.keys import Keys  # noqa: E402
from shopstream.engine.erase import audit_key_sync  # noqa: E402
from shopstream.engine.lake.archiver import Archiver  # noqa: E402
from shopstream.engine.lake.dimensions import rebuild  # noqa: E402
from shopstream.engine.lake.erasure import erase_from_lake  # noqa: E402
from shopstream.engine.lake.sql import connect  # noqa: E402
from shopstream.engine.lake.store import Lake  # noqa: E402
from shopstream.engine.partitioning import partition_of  # noqa: E402
from shopstream.engine.producer import publish  # noqa: E402
from tests.lakedata import traces  # noqa: E402

DAY = "2026-11-02"
DOC = Path(__file__).resolve().parent.parent / "docs" / "data-model.md"


def at(hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{DAY}T{hhmm}:00+00:00")


async def build(backend, settings, tmp_path) -> Lake:
    """m1 moves from FR (ios) to US (web), pays twice and gets a high-severity alert; P1 is renamed."""
    await control.ensure_groups(backend.aio, settings)
    clicks = [{"user_id": "m1", "event_type": "page_view", "timestamp": f"{DAY}T10:00:00Z", "device": "ios",
               "country": "FR"},
              {"user_id": "m1", "event_type": "page_view", "timestamp": f"{DAY}T10:01:00Z", "device": "ios",
               "country": "FR"},                                                  # no change: no version
              {"user_id": "m1", "event_type": "page_view", "timestamp": f"{DAY}T12:00:00Z", "device": "web",
               "country": "US"},
              {"user_id": "s1", "event_type": "page_view", "timestamp": f"{DAY}T09:00:00Z", "device": "web",
               "country": "DE"}]
    publish(backend.sync, clicks, settings)
    publish(backend.sync, [{"transaction_id": "t1", "user_id": "m1", "amount": "50.00", "status": "completed",
                            "timestamp": f"{DAY}T10:05:00Z", "country": "FR"},
                           {"transaction_id": "t2", "user_id": "m1", "amount": "700.00", "status": "completed",
                            "timestamp": f"{DAY}T12:05:00Z", "country": "US"},
                           {"transaction_id": "t3", "user_id": "m1", "amount": "10.00", "status": "failed",
                            "timestamp": f"{DAY}T12:30:00Z", "country": "US"}], settings, "tx")
    part = Keys(settings.namespace, settings.partitions).partition(partition_of("m1", settings.partitions))
    backend.sync.xadd(part.key("alerts"), {"rule": "card_testing", "severity": "high", "subject_kind": "user",
                                           "subject": "m1", "user_id": "m1", "window_start": 1793620800000000,
                                           "count": 5, "threshold": 4, "evidence": "{}", "entry_id": "",
                                           "detected_at": int(at("13:00").timestamp() * 1e6)})
    catalog.load(backend.sync, [b'{"product_id": "P1", "name": "Lamp", "category": "home", "price": 30, '
                                b'"updated_at": "2026-11-01T00:00:00Z"}',
                                b'{"product_id": "P1", "name": "Lamp", "category": "home", "price": 30, '
                                b'"updated_at": "2026-11-01T06:00:00Z"}',                  # same: no version
                                b'{"product_id": "P1", "name": "Desk lamp", "category": "lighting", "price": 35, '
                                b'"updated_at": "2026-11-02T11:00:00Z"}'], settings)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(backend.sync, settings, lake, until_idle=True).run()
    return lake


async def test_dim_customer_versions(backend, settings, tmp_path):
    lake = await build(backend, settings, tmp_path)
    assert rebuild(lake) == {"dim_customer": 6, "dim_product": 2}
    rows = connect(lake).sql("SELECT country, devices, lifetime_orders, spend_band, risk_band, valid_from, valid_to, "
                             "is_current FROM dim_customer WHERE user_id = 'm1' ORDER BY valid_from").fetchall()
    utc = lambda t: t and t.astimezone(timezone.utc)  # noqa: E731
    rows = [(*r[:5], utc(r[5]), utc(r[6]), r[7]) for r in rows]
    assert rows == [
        ("FR", ["ios"], 0, "none", "none", at("10:00"), at("10:05"), False),
        ("FR", ["ios"], 1, "<100", "none", at("10:05"), at("12:00"), False),
        ("US", ["ios", "web"], 1, "<100", "none", at("12:00"), at("12:05"), False),
        ("US", ["ios", "web"], 2, "500-2000", "none", at("12:05"), at("13:00"), False),
        ("US", ["ios", "web"], 2, "500-2000", "high", at("13:00"), None, True),     # the failed payment: no version
    ]
    # idempotent, and the command
    from shopstream.engine.cli import main
    main(["dims", "--lake", lake.uri])
    assert connect(lake).sql("SELECT count(*) FROM dim_customer").fetchall() == [(6,)]


async def test_dim_product_and_the_as_of_join(backend, settings, tmp_path):
    lake = await build(backend, settings, tmp_path)
    rebuild(lake)
    con = connect(lake)
    assert con.sql("SELECT name, category, price, is_current FROM dim_product ORDER BY valid_from").fetchall() == [
        ("Lamp", "home", "30", False), ("Desk lamp", "lighting", "35", True)]
    section = DOC.read_text().split("## The lake (engine/lake)", 1)[1]
    (as_of,) = [b for b in re.findall(r"```sql\n(.*?)```", section, re.S) if b.startswith("-- as_of:")]
    assert con.sql(as_of).fetchall() == [("FR", 1, "50.00"), ("US", 1, "700.00")]


async def test_erasure_rebuilds_the_dimensions_without_the_user(backend, settings, tmp_path):
    lake = await build(backend, settings, tmp_path)
    rebuild(lake)
    assert traces(Path(lake.uri) / "dim_customer", "m1")
    erase_from_lake(lake, "m1", "req-9", audit_key_sync(backend.sync, settings))
    assert traces(Path(lake.uri), "m1") == []
    assert connect(lake).sql("SELECT user_id FROM dim_customer").fetchall() == [("s1",)]

"""Retention by acknowledgement with the archiver's group: `trim` (engine/retention.py) removes only
what every group (the engine's and the archiver's) acknowledged, never entries still pending, and
never the catalog changelog."""

from __future__ import annotations

import pytest

pytest.importorskip("deltalake")

from shopstream.engine.keys import Keys  # noqa: E402
from shopstream.engine.lake.archiver import Archiver  # noqa: E402
from shopstream.engine.lake.store import Lake  # noqa: E402
from shopstream.engine.producer import publish  # noqa: E402
from shopstream.engine.retention import floors, partition_streams, trim_all  # noqa: E402
from tests.lakedata import lake_entries, run_engine  # noqa: E402

FAR_FUTURE_MS = 2**50           # every entry is older than input_retention_ms then


async def test_trim_waits_for_the_slowest_group(backend, settings, tmp_path):
    settings = settings.replace(archive_required=True)         # the lake is deployed
    await run_engine(backend, settings)
    keys = Keys(settings.namespace, settings.partitions)
    streams = partition_streams(settings, list(range(settings.partitions))) + [keys.dlq]
    outputs = {s: backend.sync.xlen(s) for s in streams if backend.sync.exists(s) and not s.endswith(
        (":clicks", ":tx", ":support", ":rekey"))}
    assert await trim_all(backend.aio, settings, FAR_FUTURE_MS) == 0   # inputs read by the engine, not archived

    lake = Lake(str(tmp_path / "lake"))
    archiver = Archiver(backend.sync, settings, lake, until_idle=True)
    archiver.start()
    archiver.read_round()                                       # read, pending, not committed
    assert await trim_all(backend.aio, settings, FAR_FUTURE_MS) == 0
    archiver.commit()
    removed = await trim_all(backend.aio, settings, FAR_FUTURE_MS)
    assert removed > 0                                          # inputs and outputs, now that every group acknowledged
    assert all(backend.sync.xlen(s) <= 1 for s in outputs)     # (the last delivered entry stays: MINID keeps it)
    assert backend.sync.xlen(keys.catalog) > 0                  # the catalog changelog is never trimmed

    # new input: the engine has not read it, so it stays even once archived
    publish(backend.sync, [{"user_id": "n1", "event_type": "page_view", "timestamp": "2026-11-02T12:00:00Z"}],
            settings)
    Archiver(backend.sync, settings, lake, until_idle=True).run()
    assert await trim_all(backend.aio, settings, FAR_FUTURE_MS) == 0
    assert len(lake_entries(lake)) > removed


async def test_the_floor_is_the_oldest_entry_any_group_still_needs(real):
    client = real.sync
    ids = [client.xadd("s", {"n": i}) for i in range(5)]
    client.xgroup_create("s", "a", id="0")
    client.xgroup_create("s", "b", id="0")
    client.xreadgroup("a", "c", {"s": ">"})                    # a: all 5 delivered ...
    client.xack("s", "a", *ids[:2])                             # ... 2 acknowledged
    client.xreadgroup("b", "c", {"s": ">"}, count=4)            # b: 4 delivered, all acknowledged
    client.xack("s", "b", *ids[:4])
    ms, seq = ids[2].decode().split("-")
    assert (await floors(real.aio, ["s"]))["s"] == (int(ms), int(seq))    # a's oldest pending
    client.xack("s", "a", *ids)
    ms, seq = ids[3].decode().split("-")
    assert (await floors(real.aio, ["s"]))["s"] == (int(ms), int(seq))    # b's last delivered: kept

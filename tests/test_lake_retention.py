"""Retention by acknowledgement: `trim` removes only what every group (the engine's and the
archiver's) acknowledged, and never entries still pending."""

from __future__ import annotations

import pytest

pytest.importorskip("deltalake")

from engine.cli import main  # noqa: E402
from engine.keys import Keys  # noqa: E402
from engine.lake.archiver import Archiver  # noqa: E402
from engine.lake.retention import safe_min_id, streams, trim_acknowledged  # noqa: E402
from engine.lake.store import Lake  # noqa: E402
from engine.producer import publish  # noqa: E402
from tests.test_lake_archive import lake_entries, run_engine  # noqa: E402


async def test_trim_waits_for_the_slowest_group(backend, settings, tmp_path):
    await run_engine(backend, settings)
    keys = Keys(settings.namespace, settings.partitions)
    lengths = {s: backend.sync.xlen(s) for s in streams(settings) if backend.sync.exists(s)}
    assert trim_acknowledged(backend.sync, settings) == {}      # the engine is done, the archiver not started

    lake = Lake(str(tmp_path / "lake"))
    archiver = Archiver(backend.sync, settings, lake, until_idle=True)
    archiver.start()
    archiver.read_round()                                       # read, pending, not committed
    assert trim_acknowledged(backend.sync, settings) == {}
    archiver.commit()
    removed = trim_acknowledged(backend.sync, settings)
    assert removed == {s: n for s, n in lengths.items() if n}   # everything, now that both groups acknowledged
    assert backend.sync.xlen(keys.catalog) > 0                  # the catalog changelog is never trimmed

    # new input: the engine has not read it, so it stays even once archived
    publish(backend.sync, [{"user_id": "n1", "event_type": "page_view", "timestamp": "2026-11-02T12:00:00Z"}],
            settings)
    Archiver(backend.sync, settings, lake, until_idle=True).run()
    assert trim_acknowledged(backend.sync, settings) == {}
    assert len(lake_entries(lake)) == sum(lengths.values()) + 1 + backend.sync.xlen(keys.catalog)


def test_safe_min_id_is_the_oldest_pending_entry(real):
    client = real.sync
    ids = [client.xadd("s", {"n": i}) for i in range(5)]
    client.xgroup_create("s", "a", id="0")
    client.xgroup_create("s", "b", id="0")
    client.xreadgroup("a", "c", {"s": ">"})                    # a: all 5 delivered ...
    client.xack("s", "a", *ids[:2])                             # ... 2 acknowledged
    client.xreadgroup("b", "c", {"s": ">"}, count=4)            # b: 4 delivered, all acknowledged
    client.xack("s", "b", *ids[:4])
    assert safe_min_id(client, "s") == ids[2].decode()
    client.xack("s", "a", *ids)
    ms, seq = ids[3].decode().split("-")
    assert safe_min_id(client, "s") == f"{ms}-{int(seq) + 1}"   # b's last delivered is the bound
    assert client.xtrim("s", minid=safe_min_id(client, "s"), approximate=False) == 4


async def test_trim_command(backend, settings, capsys):
    if not backend.url:
        pytest.skip("the command needs a URL")
    await run_engine(backend, settings)
    main(["trim", "--redis-url", backend.url, "--partitions", str(settings.partitions)])
    assert capsys.readouterr().out.startswith("trimmed 0 acknowledged entries")

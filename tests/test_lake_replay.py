"""Recovery from the lake: re-publishing a day's raw input into an empty namespace recomputes
the same sessions, alerts and minutes as the original run; an erased user does not come back."""

from __future__ import annotations

import pytest

pytest.importorskip("deltalake")

from shopstream.engine import control, export  # noqa: E402
from shopstream.engine.cli import main  # noqa: E402
from shopstream.engine.erase import audit_key_sync  # noqa: E402
from shopstream.engine.lake.archiver import Archiver  # noqa: E402
from shopstream.engine.lake.erasure import erase_from_lake  # noqa: E402
from shopstream.engine.lake.replay import replay_day  # noqa: E402
from shopstream.engine.lake.store import Lake  # noqa: E402
from tests import lakedata  # noqa: E402
from tests.helpers import consume_all  # noqa: E402
from tests.lakedata import run_engine  # noqa: E402


async def recompute(backend, settings) -> export.Outputs:
    await control.ensure_groups(backend.aio, settings)
    await consume_all(backend, settings)
    await control.flush(backend.aio, settings)
    return await export.collect(backend.aio, settings)


async def test_a_day_replayed_from_the_lake_gives_the_same_results(backend, settings, tmp_path):
    await run_engine(backend, settings)
    original = await export.collect(backend.aio, settings)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(backend.sync, settings, lake, until_idle=True).run()

    again = settings.replace(namespace="recovered")               # a lost Redis: nothing of the first run
    sent = replay_day(lake, backend.sync, again, lakedata.DAY)
    assert sent == {"catalog": 2, "clicks": len(lakedata.clicks()), "tx": 4, "support": 1}
    recovered = await recompute(backend, again)
    assert recovered.sessions == original.sessions and len(recovered.sessions) == 6
    assert recovered.minutes == original.minutes
    strip = lambda alerts: [{k: v for k, v in a.items() if k != "detected_at"} for a in alerts]  # noqa: E731
    assert strip(recovered.alerts) == strip(original.alerts) and recovered.alerts
    assert recovered.profiles == original.profiles


async def test_an_erased_user_does_not_come_back(backend, settings, tmp_path):
    await run_engine(backend, settings)
    lake = Lake(str(tmp_path / "lake"))
    Archiver(backend.sync, settings, lake, until_idle=True).run()
    erase_from_lake(lake, "b1", "req-1", audit_key_sync(backend.sync, settings))
    again = settings.replace(namespace="recovered")
    if backend.url:                                               # the command, on the real server
        main(["replay", "--from-lake", "--date", lakedata.DAY, "--lake", lake.uri, "--namespace", "recovered",
              "--partitions", str(settings.partitions), "--redis-url", backend.url])
    else:
        replay_day(lake, backend.sync, again, lakedata.DAY)
    recovered = await recompute(backend, again)
    assert {s["user_id"] for s in recovered.sessions} == {"a1", "a2", "b2", "bot"}
    assert "b1" not in {p["user_id"] for p in recovered.profiles}

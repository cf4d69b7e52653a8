"""kill -9 the archiver at random points while it archives a real redis-server's streams (new
entries keep arriving), restart it, again and again: at the end every entry of every stream is
in the lake exactly once (counted by stream and entry id)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("deltalake")

from shopstream.engine.keys import Keys  # noqa: E402
from shopstream.engine.producer import publish  # noqa: E402
from tests.lakedata import lake_entries, stream_entries  # noqa: E402
from tests.support import wait_until  # noqa: E402
from shopstream.engine.lake.store import Lake  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 14
PER_ROUND = 2000


def click(i: int) -> dict:
    return {"user_id": f"u{i % 97}", "event_type": "page_view", "event_id": f"e{i}",
            "timestamp": f"2026-11-0{1 + i % 3}T10:{i % 60:02d}:00Z", "country": "FR"}


def add_entries(client, settings, start: int, count: int) -> None:
    """Input through the producer, and records on every kind of output stream (XADD as the engine would)."""
    publish(client, [click(i) for i in range(start, start + count)], settings)
    keys = Keys(settings.namespace, settings.partitions)
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + count, 25):
        part = keys.partition(i % settings.partitions)
        pipe.xadd(part.key("sessions"), {"user_id": f"u{i}", "session_id": "1", "start": 1793613600000000 + i,
                                         "end": 1793613600000000 + i, "event_count": 1, "types": '{"page_view":1}'})
        pipe.xadd(part.key("minutes"), {"minute": 1793613600000000, "events": i, "unique_users": 1})
        pipe.xadd(keys.dlq, {"payload": "x", "reason": "bad", "stream": part.clicks, "entry_id": "1-0",
                             "partition": part.p, "at_ms": 1793613600000})
        pipe.xadd(keys.catalog, {"e": f'{{"product_id": "P{i}", "category": "c"}}'})
    pipe.execute()


def start_archiver(url: str, lake: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": url, "SHOPSTREAM_PARTITIONS": "4"}
    return subprocess.Popen([sys.executable, "-m", "shopstream.engine.cli", "archive", "--lake", lake, "--commit-rows", "300",
                             "--commit-seconds", "0.05", "--read-count", "60", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def log_versions(lake: Path) -> int:
    return sum(1 for _ in lake.glob("*/_delta_log/*.json"))


def pending(client, settings) -> int:
    keys = Keys(settings.namespace, settings.partitions)
    return sum(client.xpending(p.clicks, settings.archive_group)["pending"] for p in keys.all_partitions()
               if client.exists(p.clicks))


def test_kill_9_in_a_loop_loses_nothing_and_writes_nothing_twice(real, settings, tmp_path):
    settings = settings.replace(partitions=4)
    lake_dir = tmp_path / "lake"
    rng = random.Random(13)
    added = 0
    kills = {"read, not committed": 0, "just after a commit": 0, "at a random moment": 0}
    for n in range(ROUNDS):
        add_entries(real.sync, settings, added, PER_ROUND)
        added += PER_ROUND
        proc = start_archiver(real.url, str(lake_dir))
        mode = rng.choice(list(kills)) if n < ROUNDS - 1 else "read, not committed"   # the restart has work
        if mode == "read, not committed":
            wait_until(lambda: pending(real.sync, settings) > 0 or proc.poll() is not None, timeout=60,
                       what="the archiver to read entries", poll=0.002)
        elif mode == "just after a commit":
            target = log_versions(lake_dir) + rng.randrange(1, 6)
            wait_until(lambda: log_versions(lake_dir) >= target or proc.poll() is not None, timeout=60,
                       what=f"the lake to reach Delta version {target}", poll=0.002)
        else:
            time.sleep(rng.uniform(0.3, 1.2))     # the scenario: a random point, whatever the archiver is doing
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills[mode] += 1
    final = start_archiver(real.url, str(lake_dir), "--until-idle")
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err.decode()[-2000:]
    expected = stream_entries(real.sync, settings)
    archived = lake_entries(Lake(str(lake_dir)))
    assert sum(expected.values()) > ROUNDS * PER_ROUND
    duplicated = {k: n for k, n in archived.items() if n > 1}
    missing = set(expected) - set(archived)
    assert not duplicated and not missing, (len(duplicated), len(missing), kills)
    assert archived == expected
    assert all(kills.values()), kills
    consumers = real.sync.xinfo_consumers(Keys(settings.namespace, settings.partitions).partition(0).clicks,
                                          settings.archive_group)
    assert len(consumers) == 1                     # the killed processes' names were forgotten
    assert "archived 0 rows" not in out.decode()             # the last kill left work for the restart

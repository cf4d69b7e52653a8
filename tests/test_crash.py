"""Faults with real processes: SIGKILL a consumer, kill -9 Redis, SIGTERM — nothing lost, nothing twice.

Each test compares the final export with the batch reference (tests/reference.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from shopstream.engine.tools.servers import free_port, redis_server_binary, wait_for_redis
from shopstream.engine.tools.generate import GeneratorConfig, write_all
from shopstream.engine.producer import read_events

from .support import check_export, consumer, shopstream, wait_until

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("crashdata")
    write_all(out, GeneratorConfig(seed=5, users=3000, hours=2.0))
    return out / "clickstream_events.json"


def applied(client: redis.Redis, ns: str) -> int:
    return sum(int(client.hget(f"{ns}:{{{p}}}:state", "applied") or 0) for p in range(16))


def read_to_the_end(client: redis.Redis, stream: str) -> bool:
    """Nothing pending and the group's last-delivered-id at the last entry (not XINFO's lag: it is
    stale after a restart, see test_until_idle_exits_after_a_restart_that_left_the_group_lag_stale)."""
    group = client.xinfo_groups(stream)[0]
    last = client.xrevrange(stream, count=1)
    return group["pending"] == 0 and (not last or group["last-delivered-id"] == last[0][0])


def test_sigkill_of_a_consumer_holding_pending_entries(real_redis_url, dataset, tmp_path):
    env = {"REDIS_URL": real_redis_url, "SHOPSTREAM_NAMESPACE": "kill"}
    client = redis.Redis.from_url(real_redis_url)
    shopstream("replay", str(dataset), env=env)
    victim, survivor = consumer(env), consumer(env)
    try:
        # kill the victim while it holds delivered-but-unapplied entries: freeze it (SIGSTOP),
        # look at its pending list, and kill it if it holds some (otherwise let it run a little)
        def victim_frozen_with_pending() -> bool:
            victim.send_signal(signal.SIGSTOP)
            try:
                mine = [c for p in range(16) for c in client.xinfo_consumers(f"kill:{{{p}}}:clicks", "shopstream")
                        if f"-{victim.pid}-" in c["name"].decode()]
            except redis.ResponseError:          # groups not created yet
                mine = []
            if any(c["pending"] > 0 for c in mine):
                return True
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.003)               # the scenario: let it run a little before freezing it again
            return False
        wait_until(victim_frozen_with_pending, what="the victim to hold pending entries")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        finisher = consumer(env, "--until-idle")
        assert finisher.wait(timeout=120) == 0
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=30) == 0                         # clean shutdown on SIGTERM
        shopstream("flush", env=env)
        shopstream("export", "--out", str(tmp_path), env=env)
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                proc.kill()
    check_export(tmp_path, dataset)


@pytest.mark.parametrize("fsync", ["always"])
def test_redis_killed_and_restarted_mid_run(dataset, tmp_path, fsync):
    """kill -9 of redis-server with AOF (appendfsync always): no acknowledged event is lost and
    every entry is applied exactly once after the restart."""
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
            "--appendonly", "yes", "--appendfsync", fsync]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for_redis(url, server)
    env = {"REDIS_URL": url, "SHOPSTREAM_NAMESPACE": "rk"}
    client = redis.Redis.from_url(url)
    procs: list[subprocess.Popen] = []
    try:
        shopstream("replay", str(dataset), env=env)
        worker = consumer(env)
        procs.append(worker)
        wait_until(lambda: applied(client, "rk") > 1000, what="progress before the crash")
        server.send_signal(signal.SIGKILL)
        server.wait()
        time.sleep(0.5)                 # the scenario: Redis stays down half a second; the consumer sees it gone
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_for_redis(url, server, timeout=30)
        wait_until(lambda: all(read_to_the_end(client, f"rk:{{{p}}}:clicks") for p in range(16)),
              timeout=120, what="drain after restart")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        shopstream("flush", env=env)
        shopstream("export", "--out", str(tmp_path / "out"), env=env)
        check_export(tmp_path / "out", dataset)
    finally:
        for proc in procs + [server]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_redis_killed_during_publishing_with_everysec_loses_nothing_acknowledged(dataset, tmp_path):
    """appendfsync everysec, kill -9 while the producer writes: Redis write()s the AOF before it
    replies, so a process crash loses no acknowledged entry (the one-second window of everysec is
    for an OS crash or power loss, which a test here cannot cause) -- unless a slow disk made it
    postpone that write: with everysec, while a background fsync is still running Redis keeps new
    writes in its AOF buffer for up to 2 s and replies meanwhile (INFO aof_buffer_length > 0, seen
    on this shared machine under disk load).  What survived is applied once."""
    from shopstream.engine.producer import publish
    from shopstream.engine.settings import load_settings
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for_redis(url, server)
    env = {"REDIS_URL": url, "SHOPSTREAM_NAMESPACE": "es"}
    settings = load_settings(env=env)
    rows = list(read_events(dataset))
    client = redis.Redis.from_url(url, retry_on_timeout=False)
    acked = unwritten = 0
    aof_state: dict = {}
    try:
        for i in range(0, len(rows), 50):
            if i >= len(rows) // 2 and server.poll() is None:
                aof = client.info("persistence")
                unwritten = aof["aof_buffer_length"]      # writes postponed behind a slow fsync
                aof_state = {k: aof.get(k) for k in ("aof_buffer_length", "aof_pending_bio_fsync",
                                                     "aof_delayed_fsync", "aof_last_write_status")}
                server.send_signal(signal.SIGKILL)            # mid-publish
                server.wait()
            try:
                acked += publish(client, rows[i:i + 50], settings)
            except redis.ConnectionError:
                break
        assert 0 < acked < len(rows)
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_for_redis(url, server, timeout=30)
        present = sum(client.xlen(f"es:{{{p}}}:clicks") for p in range(16))
        print(f"\neverysec, kill -9 mid-publish: {acked} entries acknowledged, {present} present after restart"
              f" (AOF at the kill: {aof_state})")
        assert present == acked if not unwritten else present <= acked
        assert cli_consume_until_idle(env) == 0
        shopstream("flush", env=env)
        shopstream("export", "--out", str(tmp_path / "out"), env=env)
        out = tmp_path / "out"
        total = sum(s["event_count"] for s in map(json.loads, (out / "sessions.jsonl").read_text().splitlines()))
        total += len((out / "late.jsonl").read_text().splitlines()) + len((out / "dlq.jsonl").read_text().splitlines())
        assert total == present                                   # every surviving entry exactly once
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def cli_consume_until_idle(env: dict) -> int:
    return consumer(env, "--until-idle").wait(timeout=120)


class _AofRedis:
    """A redis-server with AOF (appendfsync always) that can be killed -9 and restarted in place."""

    def __init__(self, data: Path):
        data.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data),
                     "--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = self.start()

    def start(self) -> subprocess.Popen:
        proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        wait_for_redis(self.url, proc, timeout=30)
        return proc

    def kill_and_restart(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = self.start()

    def rewrite_aof(self, client: redis.Redis) -> None:
        client.bgrewriteaof()
        wait_until(lambda: not (info := client.info("persistence"))["aof_rewrite_in_progress"]
              and not info["aof_rewrite_scheduled"], what="the AOF rewrite")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_until_idle_exits_after_a_restart_that_left_the_group_lag_stale(tmp_path):
    """An AOF rewrite (Redis does one by itself as the file grows), then more entries read, then
    kill -9 and a restart: the group's entries-read comes back from the rewrite, so XINFO GROUPS
    reports lag > 0 on streams read to the end, for good.  Drained and the lag gauge decide from
    ids: `consume --until-idle` exits, the gauge says 0."""
    import asyncio

    import redis.asyncio as aioredis

    from shopstream.consumers.consumer import Consumer
    from shopstream.engine.control import drained, ensure_groups, group_state
    from shopstream.engine.producer import publish
    from shopstream.engine.settings import Settings
    from .helpers import event
    server = _AofRedis(tmp_path / "redis")
    settings = Settings(partitions=2, namespace="stale", heartbeat_ms=50, lease_ttl_ms=600, block_ms=20,
                        idle_timeout_ms=0, metrics_port=None, batch_size=50)
    client = redis.Redis.from_url(server.url)
    t0 = 1_793_520_000_000_000

    async def consume_until_idle(timeout: float = 60) -> None:
        aio = aioredis.Redis.from_url(server.url)
        try:
            await ensure_groups(aio, settings)
            await asyncio.wait_for(Consumer(aio, settings, "c", until_idle=True, idle_advance=False).run(), timeout)
        finally:
            await aio.aclose()

    offsets: dict = {}                                    # as a consumer keeps them across heartbeats

    async def state() -> tuple[bool, dict]:
        aio = aioredis.Redis.from_url(server.url)
        try:
            return await drained(aio, settings), await group_state(aio, settings, [0, 1], offsets)
        finally:
            await aio.aclose()
    try:
        publish(client, [event(f"u{i % 9}", t0 + i * 1_000_000) for i in range(300)], settings)
        asyncio.run(consume_until_idle())
        server.rewrite_aof(client)
        publish(client, [event(f"u{i % 9}", t0 + (300 + i) * 1_000_000) for i in range(300)], settings)
        asyncio.run(consume_until_idle())
        server.kill_and_restart()
        groups = [client.xinfo_groups(f"stale:{{{p}}}:clicks")[0] for p in range(2)]
        assert all(g["pending"] == 0 for g in groups)
        assert any(g["lag"] for g in groups), groups          # what Redis reports: stale, not 0
        assert asyncio.run(state()) == (True, {0: (0, 0), 1: (0, 0)})
        asyncio.run(consume_until_idle(timeout=30))          # exits: nothing to do
        publish(client, [event("u1", t0 + 900 * 1_000_000)], settings)
        done, lag = asyncio.run(state())
        assert not done and sum(l for _, l in lag.values()) == 1     # behind: Redis's lag less the stale part
        asyncio.run(consume_until_idle())
    finally:
        client.close()
        server.stop()


def test_stream_state_decides_caught_up_from_ids():
    from shopstream.engine.control import _stream_state
    stream = {"length": 10, "first-entry": (b"100-0", {}), "last-entry": (b"200-0", {}),
              "last-generated-id": b"300-0"}                   # the last entries were deleted

    def group(delivered: bytes, lag, pending: int = 0) -> list:
        return [{"name": b"g", "pending": pending, "last-delivered-id": delivered, "lag": lag}]
    assert _stream_state(group(b"200-0", 6), stream, b"g") == (0, 0)        # stale lag, read to the end
    assert _stream_state(group(b"200-0", None, 3), stream, b"g") == (3, 0)
    assert _stream_state(group(b"150-0", 4), stream, b"g") == (0, 4)        # behind: Redis's lag
    assert _stream_state(group(b"150-0", None), stream, b"g") == (0, 5)     # unknown: from the ids' times
    assert _stream_state(group(b"150-0", 99), stream, b"g") == (0, 5)       # implausible
    assert _stream_state(group(b"50-0", None), stream, b"g") == (0, 10)     # before the first entry
    assert _stream_state(group(b"199-0", None), stream, b"g") == (0, 1)
    empty = {"length": 0, "first-entry": None, "last-entry": None, "last-generated-id": b"300-0"}
    assert _stream_state(group(b"0-0", 2), empty, b"g") == (0, 0)
    assert _stream_state([], stream, b"g") == (0, 10)                        # no group yet
    offsets: dict = {}
    assert _stream_state(group(b"200-0", 6), stream, b"g", offsets, "s") == (0, 0)
    assert offsets == {"s": 6}                                                # what Redis overstates by
    assert _stream_state(group(b"150-0", 9), stream, b"g", offsets, "s") == (0, 3)
    assert _stream_state(group(b"200-0", 0), stream, b"g", offsets, "s") == (0, 0) and offsets == {}

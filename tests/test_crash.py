"""Faults with real processes: SIGKILL a consumer, kill -9 Redis, SIGTERM — nothing lost, nothing twice.

Each test compares the final export with the batch reference (tests/reference.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from engine.connection import free_port, redis_server_binary, wait_for_redis
from engine.generate import GeneratorConfig, write_all
from engine.producer import read_events

from .test_cli import REPO, reference_inputs, shopstream
from . import reference as ref
from .helpers import by_rule

FAST = {"SHOPSTREAM_LEASE_TTL_MS": "1000", "SHOPSTREAM_HEARTBEAT_MS": "200", "SHOPSTREAM_BATCH_SIZE": "40",
        "SHOPSTREAM_LINGER_MS": "0", "SHOPSTREAM_IDLE_TIMEOUT_MS": "0", "SHOPSTREAM_METRICS_PORT": "0"}


def until(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("crashdata")
    write_all(out, GeneratorConfig(seed=5, users=3000, hours=2.0))
    return out / "clickstream_events.json"


def consumer(env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "--log-level", "warning", "consume", *extra],
                            cwd=REPO, env={**os.environ, **FAST, **env})


def applied(client: redis.Redis, ns: str) -> int:
    return sum(int(client.hget(f"{ns}:{{{p}}}:state", "applied") or 0) for p in range(16))


def check_export(out: Path, dataset: Path) -> None:
    late = [json.loads(line) for line in (out / "late.jsonl").read_text().splitlines()]
    dlq = (out / "dlq.jsonl").read_text().splitlines()
    events = reference_inputs(dataset, {x["record"] for x in late})
    sessions = [{k: s[k] for k in ("user_id", "start", "end", "event_count", "counts")}
                for s in map(json.loads, (out / "sessions.jsonl").read_text().splitlines())]
    assert sessions == ref.sessions(events)                       # nothing lost, nothing twice
    alerts = [json.loads(a) for a in (out / "alerts.jsonl").read_text().splitlines()]
    assert by_rule(alerts) == ref.alerts(events)
    assert len(events) + len(late) + len(dlq) == len(list(read_events(dataset)))


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
            time.sleep(0.003)
            return False
        until(victim_frozen_with_pending, what="the victim to hold pending entries")
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
        until(lambda: applied(client, "rk") > 1000, what="progress before the crash")
        server.send_signal(signal.SIGKILL)
        server.wait()
        time.sleep(0.5)                                           # the consumer sees Redis gone
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_for_redis(url, server, timeout=30)
        until(lambda: all(client.xinfo_groups(f"rk:{{{p}}}:clicks")[0]["pending"] == 0
                          and client.xinfo_groups(f"rk:{{{p}}}:clicks")[0]["lag"] == 0 for p in range(16)),
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
    for an OS crash or power loss, which a test here cannot cause); what survived is applied once."""
    from engine.producer import publish
    from engine.settings import load_settings
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
    acked = 0
    try:
        for i in range(0, len(rows), 50):
            if i >= len(rows) // 2 and server.poll() is None:
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
        print(f"\neverysec, kill -9 mid-publish: {acked} entries acknowledged, {present} present after restart")
        assert present == acked
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

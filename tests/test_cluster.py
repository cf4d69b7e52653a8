"""The engine on a real Redis Cluster (3 masters + 3 replicas on loopback, tests/conftest.py).

Given the URL of any node, every command works; partitions spread over the masters; the export
equals the single-node one; consumers come and go; a master dies and its replica takes over.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from shopstream.engine import control, export
from shopstream.engine.connection import UNAVAILABLE, async_client, is_cluster, sync_client
from shopstream.engine.tools.servers import free_port
from shopstream.engine.erase import erase
from shopstream.engine.eventtime import US_PER_MINUTE, format_us
from shopstream.engine.tools.generate import GeneratorConfig, write_all
from shopstream.engine.keys import LEASE, SESSIONS, STATE, Keys
from shopstream.engine.layout import describe, partitions_by_master
from shopstream.engine.partitioning import partition_of
from shopstream.engine.producer import NotReplicated, publish
from shopstream.engine.report import live_minutes
from shopstream.engine.scripts import Scripts, script_names, source
from shopstream.engine.settings import Settings

from . import reference as ref
from .conftest import Backend
from .helpers import B, event, generated_events, run_events, shuffle_within
from .support import FAST, REPO, check_against_reference, check_export, consumer, read_jsonl, shopstream, strip, wait_until

T0 = 1_793_520_000_000_000
SETTINGS = Settings(partitions=16, heartbeat_ms=50, lease_ttl_ms=600, block_ms=20, idle_timeout_ms=0,
                    metrics_port=None, batch_size=200)


@pytest.fixture
def cluster(redis_cluster):
    """The session's cluster, emptied; an in-process backend (sync + asyncio cluster clients) on it."""
    client = sync_client(redis_cluster.url)
    client.flushall()
    yield Backend("cluster", client, async_client(redis_cluster.url), redis_cluster.url)
    client.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("clusterdata")
    write_all(out, GeneratorConfig(seed=21, users=400, hours=2.0))
    return out / "clickstream_events.json"


def _node_client(node) -> redis.Redis:
    return redis.Redis(port=node.port)


# -- connection and layout -----------------------------------------------------------------------
def test_cluster_mode_is_detected_from_the_url_of_any_node(redis_cluster, real_redis_url):
    for node in redis_cluster.nodes:                              # masters and replicas alike
        assert is_cluster(node.url)
        client = sync_client(node.url)
        assert isinstance(client, redis.RedisCluster)
        client.close()
    assert isinstance(async_client(redis_cluster.url), aioredis.RedisCluster)
    assert not is_cluster(real_redis_url)
    assert type(sync_client(real_redis_url)) is redis.Redis
    # users without INFO (the producer and consumer roles of ops/redis/users.acl) are detected with HELLO
    for node in redis_cluster.nodes:                              # ACLs are per node in a cluster
        _node_client(node).acl_setuser("hello-only", enabled=True, passwords=["+pw"], commands=["-@all", "+hello"])
    try:
        assert is_cluster(f"redis://hello-only:pw@127.0.0.1:{redis_cluster.nodes[0].port}/0")
    finally:
        for node in redis_cluster.nodes:
            _node_client(node).acl_deluser("hello-only")


@pytest.mark.parametrize("partitions", [16, 48])
def test_partitions_spread_over_the_masters(redis_cluster, partitions, record_property):
    client = sync_client(redis_cluster.url)
    layout = partitions_by_master(client, Keys("ss", partitions))
    text = "\n".join(describe(layout))
    print(f"\n{partitions} partitions on {len(layout)} masters:\n{text}")
    record_property(f"partitions_{partitions}", text)
    assert sorted(p for ps in layout.values() for p in ps) == list(range(partitions))
    # checked against the servers: each master answers for its partitions' keys (no MOVED)
    for name, ps in layout.items():
        node = redis.Redis(port=int(name.rsplit(":", 1)[1]))
        for p in ps:
            node.exists(Keys("ss", partitions).partition(p).clicks)
        node.close()
    counts = [len(ps) for ps in layout.values()]
    assert len(counts) == 3 and min(counts) > 0
    # the recommendation in docs/production.md: with 16 or more per master, the busiest master of
    # three holds at most 25 % more than the mean
    if partitions >= 16 * 3:
        assert max(counts) <= 1.25 * partitions / 3, text
    client.close()


# -- in-process runs -----------------------------------------------------------------------------
async def test_every_lua_call_keeps_to_one_hash_slot(cluster, monkeypatch):
    """Every script call of a full run (leases, apply, flush, release), checked with key_slot.
    The keys a script derives itself (user:, count:, hll:, fired:, tomb:) all start from KEYS[1],
    the partition prefix (lua/includes/partition_state.lua); on a cluster Redis 7 refuses a script
    that touches a key of another slot than its KEYS, so this run on a real cluster checks those too."""
    calls = []
    original = Scripts.call

    def recording(self, name, keys, args, client=None):
        calls.append((name, list(keys)))
        return original(self, name, keys, args, client)

    monkeypatch.setattr(Scripts, "call", recording)
    events = generated_events(seed=4, users=40)
    raws = [event(*e) for e in shuffle_within(events, B, seed=4)]
    out = await run_events(cluster, SETTINGS, raws, consumers=2)
    check_against_reference(out, events)
    await erase(cluster.aio, SETTINGS, events[0][0])
    assert {name for name, _ in calls} == set(script_names())
    for name, keys in calls:
        assert len({key_slot(k.encode()) for k in keys}) == 1, (name, keys)
    slots = {key_slot(keys[0].encode()) for _, keys in calls}
    assert len(slots) == SETTINGS.partitions                       # one slot per partition, all used
    # redis-py loaded each script on every master it ran on (EVALSHA, SCRIPT LOAD after NOSCRIPT)
    shas = [hashlib.sha1(source(name).body.encode()).hexdigest() for name in script_names()]
    for master in cluster.sync.get_primaries():
        assert cluster.sync.get_redis_connection(master).script_exists(*shas) == [True] * len(shas)
    # the guard the run relies on: a script reaching outside its slot fails on a cluster
    with pytest.raises(redis.ResponseError, match="slot|non local"):
        cluster.sync.eval("return redis.call('GET', KEYS[1] .. 'x') or redis.call('GET', 'ss:{9}:x')", 1,
                          Keys("ss", 16).partition(0).prefix)


async def test_global_minute_metrics_add_up_across_shards(cluster):
    events = generated_events(seed=8, users=80)
    raws = [event(*e) for e in sorted(events, key=lambda e: e[1])]
    out = await run_events(cluster, SETTINGS, raws, flush=False)
    # a minute is finalized partition by partition (each has its own watermark): what the export
    # has so far plus the live counters of the partitions where it is still open
    seen = {m["minute"]: [m["events"], m["unique_users"]] for m in out.minutes}
    live = live_minutes(cluster.sync, SETTINGS)
    for m, (n, users) in live.items():
        acc = seen.setdefault(format_us(m * US_PER_MINUTE), [0, 0])
        acc[0] += n
        acc[1] += users
    want = {m["minute"]: m for m in ref.minutes(events)}
    assert live and sorted(seen) == sorted(want)
    for minute, w in want.items():
        assert seen[minute][0] == w["events"]
        assert abs(seen[minute][1] - w["unique_users"]) <= max(1, 0.02 * w["unique_users"])
    # the busiest minute's users live in partitions served by more than one master
    minute_users: dict[int, set] = {}
    for user, ts, _ in events:
        minute_users.setdefault(ts // US_PER_MINUTE, set()).add(user)
    busiest = max(minute_users.values(), key=len)
    keys = Keys(SETTINGS.namespace, SETTINGS.partitions)
    masters = {cluster.sync.get_node_from_key(keys.partition(partition_of(u, 16)).prefix).name for u in busiest}
    assert len(masters) > 1
    await control.flush(cluster.aio, SETTINGS)
    check_against_reference(await export.collect(cluster.aio, SETTINGS), events)


async def test_alerts_reach_subscribers_on_every_node(cluster, redis_cluster):
    """PUBLISH from a script on one master reaches a subscriber anywhere in the cluster: the
    cluster client's pub/sub (`shopstream tail`) and a plain client of a node of another shard
    (the bench's subscriber)."""
    channel = Keys(SETTINGS.namespace, SETTINGS.partitions).channel(SETTINGS.alerts_channel)
    bot_master = cluster.sync.get_node_from_key(Keys("ss", 16).partition(partition_of("bot", 16)).prefix).port
    elsewhere = next(n for n in redis_cluster.masters() if n.port != bot_master)
    subscribers = [cluster.sync.pubsub(), _node_client(elsewhere).pubsub()]
    for sub in subscribers:
        sub.subscribe(channel)
        assert sub.get_message(timeout=5)["type"] == "subscribe"
    await run_events(cluster, SETTINGS, [event("bot", T0 + i * 1000) for i in range(101)], flush=False)
    for sub in subscribers:
        message = sub.get_message(timeout=5)
        assert message is not None and message["type"] == "message"
        assert json.loads(message["data"])["user_id"] == "bot"
        sub.close()


# -- the command line, as a user runs it ---------------------------------------------------------
def _comparable(out: Path) -> dict[str, list]:
    rows = {name: read_jsonl(out / f"{name}.jsonl") for name in ("sessions", "minutes", "alerts", "late", "dlq")}
    for a in rows["alerts"]:
        del a["detected_at"]                                      # wall clock
        if a["subject_kind"] != "user":
            # an IP's or card's partition hears from many partitions (rekeyed records): which user
            # tips it over the threshold, and which come first in the evidence's sample, depends on
            # the arrival order across partitions (two single-node runs differ there too)
            del a["user_id"]
            a["evidence"].pop("users_sample", None)
    for d in rows["dlq"]:
        del d["entry_id"]                                         # the id Redis gave the entry
    rows["dlq"].sort(key=json.dumps)
    return rows


def test_export_on_the_cluster_equals_the_single_node_export(redis_cluster, real_redis_url, dataset, tmp_path):
    single, clustered = tmp_path / "single", tmp_path / "cluster"
    shopstream("run", str(dataset), "--out", str(single), "--namespace", "eq", "--reset",
               env={"REDIS_URL": real_redis_url})
    stdout = shopstream("demo", "--file", str(dataset), "--out", str(clustered), "--namespace", "eq", "--reset",
                        env={"REDIS_URL": redis_cluster.url})
    assert "Sessions:" in stdout
    got, want = _comparable(clustered), _comparable(single)
    print("\nexport rows, cluster vs single node: " + ", ".join(f"{k} {len(got[k])}/{len(want[k])}" for k in got))
    assert all(want.values())                                     # the generator plants late and bad records
    assert got == want
    check_export(clustered, dataset)


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line within the timeout"
    return proc.stdout.readline()


def test_every_command_with_the_url_of_a_cluster_node(redis_cluster, dataset, tmp_path):
    replica = next(n for n in redis_cluster.nodes if n not in redis_cluster.masters())
    env = {**FAST, "REDIS_URL": replica.url, "SHOPSTREAM_NAMESPACE": "cmd"}   # even a replica's URL
    shopstream("reset", env=env)
    tail = subprocess.Popen([sys.executable, "-m", "shopstream.engine.cli", "tail"], cwd=REPO, text=True,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "listening" in tail.stderr.readline()
        assert "published" in shopstream("replay", str(dataset), env=env)
        workers = [consumer(env, "--until-idle") for _ in range(2)]
        assert [w.wait(timeout=120) for w in workers] == [0, 0]
        assert json.loads(_read_line(tail, 10))["rule"]                 # an alert, whichever rule fired first
    finally:
        tail.terminate()
        tail.wait()
    assert "open" in shopstream("metrics", "--last", "100", env=env)       # minutes not finalized yet
    assert len(shopstream("layout", env=env).splitlines()) == 1 + 3 + 1
    shopstream("flush", env=env)
    shopstream("export", "--out", str(tmp_path), env=env)
    check_export(tmp_path, dataset)
    user = read_jsonl(tmp_path / "sessions.jsonl")[0]["user_id"]
    assert "closed" in shopstream("sessions", user, env=env)
    assert "erased" in shopstream("erase", user, env=env)
    client = sync_client(redis_cluster.url)
    part = Keys("cmd", 16).partition(partition_of(user, 16))
    assert all(f[b"user_id"].decode() != user for _, f in client.xrange(part.key(SESSIONS)))
    assert "deleted" in shopstream("reset", env=env)
    assert list(client.scan_iter(match="cmd:*")) == []                     # on every master
    client.close()


# -- consumers come and go -----------------------------------------------------------------------
def _owners(client, keys: Keys) -> set[bytes]:
    return {o for o in (client.get(p.key(LEASE)) for p in keys.all_partitions()) if o}


def _pending_of(client, keys: Keys, pid: int) -> int:
    total = 0
    for part in keys.all_partitions():
        try:
            total += sum(c["pending"] for c in client.xinfo_consumers(part.clicks, "shopstream")
                         if f"-{pid}-" in c["name"].decode())
        except redis.ResponseError:
            pass
    return total


def _drained(url: str, settings: Settings) -> bool:
    async def check():
        client = async_client(url)
        try:
            return await control.drained(client, settings)
        finally:
            await client.aclose()
    try:
        return asyncio.run(check())
    except UNAVAILABLE:
        return False


def test_consumers_scale_1_to_4_to_2_during_a_run(redis_cluster, dataset, tmp_path, record_property):
    ns = "scale"
    env = {**FAST, "REDIS_URL": redis_cluster.url, "SHOPSTREAM_NAMESPACE": ns}
    keys = Keys(ns, 16)
    client = sync_client(redis_cluster.url)
    total = len(dataset.read_bytes().splitlines())
    applied = lambda: sum(int(client.hget(p.key(STATE), "applied") or 0) for p in keys.all_partitions())  # noqa: E731
    shopstream("reset", env=env)
    first = consumer(env)
    replay = subprocess.Popen([sys.executable, "-m", "shopstream.engine.cli", "replay", str(dataset), "--rate", "2000"],
                              cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    procs = [first, replay]
    try:
        wait_until(lambda: applied() > total * 0.1, what="progress with one consumer")
        at_one = applied()
        procs += [consumer(env) for _ in range(3)]
        wait_until(lambda: len(_owners(client, keys)) == 4, what="four consumers sharing the partitions")
        at_four = applied()
        # two leave: one crashes (SIGKILL while it holds delivered, unapplied entries), one stops (SIGTERM)
        crasher, leaver = procs[2], procs[3]

        phase = random.Random(3)

        def frozen_with_pending() -> bool:
            crasher.send_signal(signal.SIGSTOP)
            if _pending_of(client, keys, crasher.pid):
                return True
            crasher.send_signal(signal.SIGCONT)
            time.sleep(phase.uniform(0.002, 0.03))      # stop it at another point of its read/apply cycle
            return False
        wait_until(frozen_with_pending, timeout=120, what="the crasher to hold pending entries")
        orphaned, at_leave = _pending_of(client, keys, crasher.pid), applied()
        crasher.kill()
        leaver.send_signal(signal.SIGTERM)
        assert leaver.wait(timeout=30) == 0
        wait_until(lambda: len(_owners(client, keys)) == 2, what="two consumers left")
        assert replay.wait(timeout=120) == 0
        wait_until(lambda: _drained(redis_cluster.url, Settings(namespace=ns)), timeout=120, what="drain")
        assert _pending_of(client, keys, crasher.pid) == 0          # its entries were claimed and applied
        for worker in (first, procs[4]):
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
        shopstream("flush", env=env)
        shopstream("export", "--out", str(tmp_path), env=env)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    summary = (f"{total} records: 1 consumer ({at_one} applied), then 4 ({at_four} applied when all four held "
               f"partitions), then at {at_leave} applied one SIGKILLed holding {orphaned} delivered, unapplied "
               f"entries and one SIGTERMed; the other 2 finished, the crashed one's entries reclaimed")
    print("\n" + summary)
    record_property("scale", summary)
    check_export(tmp_path, dataset)                                # no loss, no double count
    client.close()


# -- failover ------------------------------------------------------------------------------------
def _scrape_applied(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    line = next(x for x in text.splitlines() if x.startswith('shopstream_events_total{outcome="applied"}'))
    return int(float(line.split()[-1]))


def _replica_of(redis_cluster, master):
    for node in redis_cluster.nodes:
        info = _node_client(node).info("replication")
        if info["role"] == "slave" and info["master_port"] == master.port:
            return node
    raise AssertionError(f"no replica of {master.port}")


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_failover_of_a_master_mid_run(redis_cluster, wait_replicas, record_property):
    """The master serving the most partitions dies while the producer writes and two consumers
    apply; its replica is promoted; the engine carries on.  Just before, the link to its replica
    breaks (CLIENT KILL TYPE replica: a network blip) and one more batch is written: replication is
    asynchronous, so without WAIT that batch is acknowledged yet only on the master.  Counted:
    events acknowledged but gone (lost), applications redone (replayed), and every surviving event
    applied exactly once (the export equals the reference over what survived)."""
    ns = f"fo{wait_replicas}"
    settings = Settings(namespace=ns, partitions=16, wait_replicas=wait_replicas, wait_timeout_ms=300,
                        metrics_port=None)
    keys = Keys(ns, 16)
    events = sorted(generated_events(seed=31, users=300), key=lambda e: e[1])
    rows = [event(*e, event_id=f"ev{i}") for i, e in enumerate(events)]
    client = sync_client(redis_cluster.url)
    layout = partitions_by_master(client, keys)
    busiest = max(layout, key=lambda m: len(layout[m]))
    victim = next(n for n in redis_cluster.masters() if n.url.split("/")[2] == busiest)
    heir = _replica_of(redis_cluster, victim)
    ports = [free_port(), free_port()]
    # leases outlive the failover (~2 node timeouts): ownership stays put while the shard is away
    env = {**FAST, "REDIS_URL": redis_cluster.url, "SHOPSTREAM_NAMESPACE": ns, "SHOPSTREAM_LEASE_TTL_MS": "10000"}
    workers = [consumer({**env, "SHOPSTREAM_METRICS_PORT": str(port)}) for port in ports]
    wait_until(lambda: len(_owners(client, keys)) == 2, what="both consumers at work")
    acked: set[str] = set()
    failed = 0
    blip = killed_at = promoted_after = None
    try:
        for i in range(0, len(rows), 100):
            if blip is None and i >= len(rows) // 3:
                blip = _node_client(victim).client_kill_filter(_type="replica")
            elif blip and killed_at is None:
                redis_cluster.kill(victim)
                killed_at = time.monotonic()
            try:
                publish(client, rows[i:i + 100], settings)
                acked.update(f"ev{j}" for j in range(i, min(i + 100, len(rows))))
            except (*UNAVAILABLE, NotReplicated):
                failed += 1
                time.sleep(0.05)        # the scenario: the producer's own pause before it retries
            if killed_at and not promoted_after and _node_client(heir).info("replication")["role"] == "master":
                promoted_after = time.monotonic() - killed_at
                redis_cluster.replace(victim)                     # a new replica for the heir
        wait_until(lambda: _node_client(heir).info("replication")["role"] == "master", what="promotion")
        if not promoted_after:
            promoted_after = time.monotonic() - killed_at
            redis_cluster.replace(victim)
        wait_until(lambda: _drained(redis_cluster.url, settings), timeout=120, what="drain after the failover")
        by_consumers = sum(_scrape_applied(port) for port in ports)
        for w in workers:
            w.send_signal(signal.SIGTERM)
            assert w.wait(timeout=30) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    present = Counter(json.loads(f[b"e"])["event_id"] for part in keys.all_partitions()
                      for _, f in client.xrange(part.clicks))
    state = [client.hmget(p.key(STATE), "applied", "duplicates") for p in keys.all_partitions()]
    applied, dups = (sum(int(s[i] or 0) for s in state) for i in (0, 1))
    lost = acked - set(present)
    figures = {"wait_replicas": wait_replicas, "events": len(rows), "acknowledged": len(acked),
               "chunks_failed": failed, "lost_acknowledged": len(lost),
               "present_not_acknowledged": len(set(present) - acked),
               "present_twice": sum(c - 1 for c in present.values()), "applied": applied,
               "duplicates_skipped": dups, "replayed": by_consumers - applied,
               "promotion_s": round(promoted_after, 1)}
    print(f"\nfailover: {figures}")
    record_property("failover", json.dumps(figures))
    assert applied == len(present) and applied + dups == sum(present.values())   # each survivor once
    asyncio.run(_flush(redis_cluster.url, settings))
    out = asyncio.run(_collect(redis_cluster.url, settings))
    survivors = [e for i, e in enumerate(events) if f"ev{i}" in present]
    assert strip(out.sessions) == ref.sessions(survivors)
    if wait_replicas:
        assert not lost                                           # what WAIT confirmed survives the failover
    client.close()


async def _flush(url: str, settings: Settings) -> None:
    client = async_client(url)
    try:
        await control.flush(client, settings)
    finally:
        await client.aclose()


async def _collect(url: str, settings: Settings) -> export.Outputs:
    client = async_client(url)
    try:
        return await export.collect(client, settings)
    finally:
        await client.aclose()

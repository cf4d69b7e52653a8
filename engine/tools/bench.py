"""``shopstream bench``: the engine against the raw transport, on a redis-server it starts.

Every stage runs the same producer (this process, pipelined XADD) concurrently with N
consumer *processes*; the transport stage's consumers only XREADGROUP + XACK, the engine
stage's are ``shopstream consume``.  A subscriber process timestamps every alert it receives
(detection latency = received - entry appended).  Redis CPU comes from INFO deltas, consumer
CPU from /proc.  Ratios measured in the same run are what to compare on a noisy machine.

(Over 300 lines: one benchmark, its stages and its report table belong together; a tool, not runtime.)
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import redis

from .. import control
from .benchdata import generate
from ..connection import async_client, is_cluster_client, sync_client
from .servers import embedded_redis, wait_for_redis
from ..keys import OPEN, OPEN_MINUTES, Keys
from ..pipeline import child_env
from ..producer import publish
from ..rules import Rules
from ..settings import Settings, load_settings

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Stage:
    name: str
    consumers: int
    partitions: int
    events: int
    seconds: float = 0.0
    events_per_s: float = 0.0
    redis_cpu_us_per_event: float = 0.0
    consumer_cpu_us_per_event: float = 0.0
    producer_cpu_us_per_event: float = 0.0
    lua_calls: int = 0
    lua_us_per_call: float = 0.0
    apply_us_per_event: float = 0.0
    alerts: int = 0
    latency_ms: dict = field(default_factory=dict)
    busiest_master_cpu_us_per_event: float = 0.0     # Redis Cluster; = redis_cpu_us_per_event on one Redis


def _ensure_groups(url: str, settings: Settings) -> None:
    async def create():
        client = async_client(url)
        try:
            await control.ensure_groups(client, settings)
        finally:
            await client.aclose()
    asyncio.run(create())


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError):
        return 0.0


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def _masters(client) -> list[redis.Redis]:
    """A client of each master: its own CPU and command stats (one on a single Redis)."""
    if is_cluster_client(client):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": values[-1], "n": len(values)}


def _drained(client: redis.Redis, keys: Keys, group: str, total: int) -> bool:
    done = 0
    for part in keys.all_partitions():
        for g in client.xinfo_groups(part.clicks):
            if g["name"] == group.encode():
                done += (g.get("entries-read") or 0) - g["pending"]
    return done >= total


RULE_NAMES = [name for name in Rules.__struct_fields__ if hasattr(getattr(Rules(), name), "enabled")]


def run_stage(url: str, base: Settings, payloads: list[bytes], name: str, consumers: int, partitions: int,
              rate: float | None = None, profile: str | None = None, rules_file: str | None = None,
              after: "Callable[[redis.Redis, Settings], None] | None" = None) -> Stage:
    """One stage on a fresh namespace; ``after(client, settings)`` runs once the stage's input is
    drained and its processes stopped, before the next stage flushes Redis (the archive measurement)."""
    settings = base.replace(redis_url=url, partitions=partitions, namespace=f"b{int(time.time() * 1000) % 10**8}",
                            rules_file=rules_file)
    keys = Keys(settings.namespace, partitions)
    client = sync_client(url)
    client.flushall()
    _ensure_groups(url, settings)
    env = child_env(settings)
    lat_file = tempfile.NamedTemporaryFile(prefix="shopstream-lat-", delete=False).name
    subscriber = subprocess.Popen([sys.executable, "-m", "shopstream.engine.tools.bench", "_subscribe", url,
                                   keys.channel(settings.alerts_channel), lat_file], env=env)
    workers = []
    for i in range(consumers):
        if name == "transport":
            cmd = [sys.executable, "-m", "shopstream.engine.tools.bench", "_transport", str(i), str(consumers)]
        else:
            cmd = [sys.executable, "-m", "shopstream.engine.cli", "--log-level", "warning", "consume"]
            if profile and i == 0:
                cmd += ["--profile", profile]
        workers.append(subprocess.Popen(cmd, env=env))
    time.sleep(0.5)                      # consumers joined and hold their leases
    masters = _masters(client)
    for master in masters:
        master.config_resetstat()
    cpu0 = [_redis_cpu(master) for master in masters]
    start = time.perf_counter()
    p0 = time.process_time()
    chunk = 1000 if not rate else max(1, int(rate / 100))
    for i in range(0, len(payloads), chunk):
        publish(client, payloads[i:i + chunk], settings)
        if rate:
            ahead = (i + chunk) / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
    producer_cpu = time.process_time() - p0
    while not _drained(client, keys, settings.group, len(payloads)):
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    redis_cpus = [_redis_cpu(master) - before for master, before in zip(masters, cpu0)]
    redis_cpu = sum(redis_cpus)
    consumer_cpu = sum(_proc_cpu(w.pid) for w in workers)
    evalsha = [master.info("commandstats").get("cmdstat_evalsha", {}) for master in masters]
    calls, usec = sum(e.get("calls", 0) for e in evalsha), sum(e.get("usec", 0) for e in evalsha)
    for w in workers + [subscriber]:
        w.send_signal(signal.SIGTERM)
    for w in workers + [subscriber]:
        w.wait(timeout=30)
    latencies = [float(x) for x in Path(lat_file).read_text().split()]
    os.unlink(lat_file)
    if after:
        after(client, settings)
    n = len(payloads)
    return Stage(name, consumers, partitions, n, seconds, n / seconds, redis_cpu / n * 1e6, consumer_cpu / n * 1e6,
                 producer_cpu / n * 1e6, calls, usec / max(calls, 1), usec / n, len(latencies),
                 _percentiles(latencies), max(redis_cpus) / n * 1e6)


def memory_profile(url: str, base: Settings, users: int = 20_000) -> dict:
    """Marginal memory: per open session (one per user), per partition-minute (count + HLL of
    ~users/partitions users), per retained input entry, and per profile once the sessions have
    closed (a profile gets a session's click fields then); from MEMORY USAGE of the keys involved."""
    settings = base.replace(redis_url=url, namespace="mem")
    keys = Keys(settings.namespace, settings.partitions)
    client = redis.Redis.from_url(url)
    client.flushall()
    env = child_env(settings)
    _ensure_groups(url, settings)
    t0 = 1_793_520_000_000                         # one event per user, all within one minute
    rows = [json.dumps({"event_id": f"e{i}", "user_id": f"user{i:06d}", "event_type": "page_view",
                        "timestamp": t0 + i * 50_000 // users, "device": "web", "country": "US",
                        "ip": f"10.1.{i >> 8 & 255}.{i & 255}"}).encode() for i in range(users)]
    publish(client, rows, settings)
    subprocess.run([sys.executable, "-m", "shopstream.engine.cli", "--log-level", "warning", "consume", "--until-idle"],
                   env=env, check=True)
    sessions = state_bytes = minute_bytes = minutes = stream_bytes = entries = profiles = profile_bytes = 0
    for part in keys.all_partitions():
        for key in client.scan_iter(match=part.prefix + "user:*", count=1000):
            state_bytes += client.memory_usage(key, samples=0) or 0
        sessions += client.zcard(part.key(OPEN))
        state_bytes += client.memory_usage(part.key(OPEN), samples=0) or 0
        for m in client.zrange(part.key(OPEN_MINUTES), 0, -1):
            minute_bytes += (client.memory_usage(part.count(int(m))) or 0) + (client.memory_usage(part.hll(int(m))) or 0)
            minutes += 1
        stream_bytes += client.memory_usage(part.clicks, samples=0) or 0
        entries += client.xlen(part.clicks)
    subprocess.run([sys.executable, "-m", "shopstream.engine.cli", "--log-level", "warning", "flush"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    for part in keys.all_partitions():
        for key in client.scan_iter(match=part.prefix + "profile:*", count=1000):
            profile_bytes += client.memory_usage(key, samples=0) or 0
            profiles += 1
    return {"open_sessions": sessions, "bytes_per_open_session": state_bytes / max(sessions, 1),
            "partition_minutes": minutes, "users_per_partition_minute": users / max(minutes, 1),
            "bytes_per_partition_minute": minute_bytes / max(minutes, 1),
            "bytes_per_input_entry": stream_bytes / max(entries, 1),
            "bytes_per_profile": profile_bytes / max(profiles, 1),
            "input_payload_bytes": sum(map(len, rows)) / len(rows)}


def _transport_worker(index: int, count: int) -> None:
    """Consume with no processing: XREADGROUP COUNT 1000 + XACK on partitions p % count == index."""
    settings = load_settings()
    keys = Keys(settings.namespace, settings.partitions)
    client = redis.Redis.from_url(settings.redis_url)
    streams = {p.clicks: ">" for p in keys.all_partitions() if p.p % count == index}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        reply = client.xreadgroup(settings.group, f"t{index}", streams, count=settings.batch_size, block=100)
        if reply:
            pipe = client.pipeline(transaction=False)
            for stream, entries in reply:
                pipe.xack(stream, settings.group, *[e[0] for e in entries])
            pipe.execute()


def _subscriber(url: str, channel: str, out: str) -> None:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    latencies = []
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        try:
            msg = pubsub.get_message(timeout=0.1)
        except redis.TimeoutError:       # a busy server answered late: keep listening
            continue
        if msg and msg["type"] == "message":
            now_ms = time.time() * 1000
            entry_id = json.loads(msg["data"])["entry_id"]
            if entry_id:            # '' when a closing session raised it: no triggering entry
                latencies.append(now_ms - int(entry_id.split("-")[0]))
    Path(out).write_text("\n".join(f"{x:.3f}" for x in latencies))


def _archive_measure(report: dict) -> "Callable[[redis.Redis, Settings], None] | None":
    """The archive throughput (engine/lake/benchlake.py) over what the engine stage left in Redis
    (input and every output stream), into a scratch lake; None when the lake extra is not installed."""
    if importlib.util.find_spec("deltalake") is None:
        return None

    def measure(client: redis.Redis, settings: Settings) -> None:
        from ..lake.benchlake import archive_throughput
        folder = tempfile.mkdtemp(prefix="shopstream-bench-lake-")
        try:
            report["archive"] = archive_throughput(client, settings, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return measure


def run(events: int, users: int, runs: int, consumers: list[int], partitions: list[int], rate: float,
        json_out: str | None, profile: str | None, growth: bool, appendfsync: str = "everysec") -> dict:
    print(f"generating {events:,} events ({users:,} users, bots, 2 % out of order)...", flush=True)
    payloads = generate(events, users=users)
    base = Settings(metrics_port=None, idle_timeout_ms=0)
    report: dict = {"machine": _machine(), "events": events, "runs": runs, "stages": []}
    aof = ["--appendonly", "no"] if appendfsync == "no" else ["--appendonly", "yes", "--appendfsync", appendfsync]
    report["machine"]["appendfsync"] = appendfsync
    with embedded_redis(*aof) as url:
        wait_for_redis(url)
        default_c, default_p = consumers[len(consumers) // 2], base.partitions
        pairs, bare = [], []
        no_rules = Path(tempfile.mkdtemp(prefix="shopstream-bench-")) / "no-rules.toml"
        no_rules.write_text("".join(f"[{name}]\nenabled = false\n" for name in RULE_NAMES))
        for r in range(runs):
            t = run_stage(url, base, payloads, "transport", default_c, default_p)
            archive_after = _archive_measure(report) if r == 0 else None
            e = run_stage(url, base, payloads, "engine", default_c, default_p, profile=profile if r == 0 else None,
                          after=archive_after)
            if archive_after and "archive" in report:
                report["archive"]["engine_events_per_s"] = e.events_per_s
            b = run_stage(url, base, payloads, "engine-no-rules", default_c, default_p, rules_file=str(no_rules))
            pairs.append((t, e))
            bare.append(b)
            print(f"run {r + 1}/{runs}: transport {t.events_per_s:,.0f}/s  engine {e.events_per_s:,.0f}/s "
                  f"(ratio {e.events_per_s / t.events_per_s:.2f})  without rules {b.events_per_s:,.0f}/s", flush=True)
            report["stages"] += [asdict(t), asdict(e), asdict(b)]
        med = lambda xs: statistics.median(xs)  # noqa: E731
        summary = {
            "transport_events_per_s": med([t.events_per_s for t, _ in pairs]),
            "engine_events_per_s": med([e.events_per_s for _, e in pairs]),
            "ratio": med([e.events_per_s / t.events_per_s for t, e in pairs]),
            "redis_cpu_us_per_event": med([e.redis_cpu_us_per_event for _, e in pairs]),
            "transport_redis_cpu_us_per_event": med([t.redis_cpu_us_per_event for t, _ in pairs]),
            "lua_us_per_call": med([e.lua_us_per_call for _, e in pairs]),
            "apply_us_per_event": med([e.apply_us_per_event for _, e in pairs]),
            "consumer_cpu_us_per_event": med([e.consumer_cpu_us_per_event for _, e in pairs]),
            "producer_cpu_us_per_event": med([e.producer_cpu_us_per_event for _, e in pairs]),
            "backlog_latency_ms": pairs[len(pairs) // 2][1].latency_ms,
            "no_rules_events_per_s": med([b.events_per_s for b in bare]),
            "no_rules_apply_us_per_event": med([b.apply_us_per_event for b in bare]),
        }
        capacity = 0.95 * summary["engine_events_per_s"]
        at_capacity = run_stage(url, base, payloads[: max(int(capacity * 20), 1000)], "engine@capacity",
                                default_c, default_p, rate=capacity)
        summary["capacity_rate"] = capacity
        summary["capacity_latency_ms"] = at_capacity.latency_ms
        report["stages"].append(asdict(at_capacity))
        fixed = run_stage(url, base, payloads[: max(int(rate * 20), 1000)], "engine@rate", default_c, default_p,
                          rate=rate)
        summary["fixed_rate_events_per_s"] = rate
        summary["fixed_rate_latency_ms"] = fixed.latency_ms
        report["stages"].append(asdict(fixed))
        scaling = []
        for c in consumers:
            s = run_stage(url, base, payloads, "engine", c, default_p)
            scaling.append({"consumers": c, "partitions": default_p, "events_per_s": s.events_per_s})
        for p in partitions:
            s = run_stage(url, base, payloads, "engine", default_c, p)
            scaling.append({"consumers": default_c, "partitions": p, "events_per_s": s.events_per_s})
        summary["scaling"] = scaling
        if growth:
            big = generate(events * 5, users=users, hours=30.0, seed=2)   # same users and density, 5x longer
            g = run_stage(url, base, big, "engine", default_c, default_p)
            summary["growth_5x_events_per_s"] = g.events_per_s
        summary["memory"] = memory_profile(url, base, users)
    report["summary"] = summary
    print_table(report)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {json_out}")
    return report


def _machine() -> dict:
    import platform
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "redis": next((w[2:] for w in out if w.startswith("v=")), "?"),
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def print_table(report: dict) -> None:
    s = report["summary"]
    m = report["machine"]
    lat = lambda d: f"p50 {d.get('p50', 0):.1f} / p99 {d.get('p99', 0):.1f} / max {d.get('max', 0):.1f} ms (n={d.get('n', 0)})"  # noqa: E731
    rows = [
        ("transport ceiling (XADD -> XREADGROUP -> XACK)", f"{s['transport_events_per_s']:,.0f} events/s", ""),
        ("engine end to end", f"{s['engine_events_per_s']:,.0f} events/s", ">= 80,000"),
        ("engine / transport", f"{s['ratio']:.2f}", ">= 0.5"),
        ("apply script, Redis time per event", f"{s['apply_us_per_event']:.2f} us "
         f"({s['lua_us_per_call']:,.0f} us per call)", "<= 6"),
        ("rule set's share of the apply (rules off: same run)",
         f"{s['apply_us_per_event'] - s['no_rules_apply_us_per_event']:.2f} us "
         f"({s['no_rules_apply_us_per_event']:.2f} us, {s['no_rules_events_per_s']:,.0f} events/s without)", ""),
        ("Redis CPU per event, whole server (XADD, reads, AOF)", f"{s['redis_cpu_us_per_event']:.2f} us", ""),
        ("consumer (Python) CPU per event", f"{s['consumer_cpu_us_per_event']:.2f} us", ""),
        ("producer (Python) CPU per event", f"{s['producer_cpu_us_per_event']:.2f} us", ""),
        (f"detection latency at {s['fixed_rate_events_per_s']:,.0f} events/s", lat(s["fixed_rate_latency_ms"]),
         "p99 <= 50 ms"),
        (f"detection latency at {s['capacity_rate']:,.0f} events/s (95 % of capacity)",
         lat(s["capacity_latency_ms"]), "p99 < 1000 ms"),
        ("detection latency, producer far ahead (backlog)", lat(s["backlog_latency_ms"]), ""),
        ("open session state", f"{s['memory']['bytes_per_open_session']:.0f} bytes/session "
         f"({s['memory']['open_sessions']:,} open)", "<= 300"),
        ("per-minute metrics", f"{s['memory']['bytes_per_partition_minute']:,.0f} bytes/minute/partition "
         f"({s['memory']['users_per_partition_minute']:,.0f} users)", "<= 16 KB"),
        ("customer profile (one visit: seen, device, country, events)",
         f"{s['memory']['bytes_per_profile']:.0f} bytes", ""),
        ("retained input entry", f"{s['memory']['bytes_per_input_entry']:.0f} bytes "
         f"(for a {s['memory']['input_payload_bytes']:.0f}-byte event)", ""),
    ]
    if "archive" in report:              # the lake extra installed: the archiver over the first run's streams
        a = report["archive"]
        ratio = a["rows_per_s"] / a["engine_events_per_s"] if a.get("engine_events_per_s") else 0
        rows.append(("archive rows/s vs engine events/s (same run)",
                     f"{a['rows_per_s']:,.0f} rows/s vs {a['engine_events_per_s']:,.0f} events/s ({ratio:.2f}x)",
                     ">= 1x"))
        rows.append(("lake bytes per click event (bronze_clicks, Parquet)", f"{a['bytes_per_click_event']} bytes "
                     f"({a['rows']:,} rows, commits {a['commit_share']:.0%} of the time)", ""))
    if "growth_5x_events_per_s" in s:
        rows.append(("engine, 5x the input", f"{s['growth_5x_events_per_s']:,.0f} events/s", "within 10 %"))
    print(f"\nShopStream bench - {report['events']:,} events, {m['cpus']} CPUs, redis {m['redis']} "
          f"(appendfsync {m['appendfsync']}), Python {m['python']}, {m['date']} (medians of {report['runs']} runs)")
    width = max(len(r[0]) for r in rows)
    for label, value, target in rows:
        print(f"  {label:<{width}}  {value:<44} {('target ' + target) if target else ''}")
    print("  scaling: " + ", ".join(f"{x['consumers']}c/{x['partitions']}p {x['events_per_s']:,.0f}/s"
                                    for x in s["scaling"]))
    for note in limits(report):
        print("  limit: " + note)


def limits(report: dict) -> list[str]:
    """What bounds a missed target, from the numbers of the same run (see docs/benchmarks.md)."""
    s, cpus = report["summary"], report["machine"]["cpus"]
    notes = []
    per_event = s["producer_cpu_us_per_event"] + s["consumer_cpu_us_per_event"] + s["redis_cpu_us_per_event"]
    if s["engine_events_per_s"] < 80_000 or s["ratio"] < 0.5:
        notes.append(f"CPU: producer {s['producer_cpu_us_per_event']:.1f} + consumers {s['consumer_cpu_us_per_event']:.1f}"
                     f" + Redis {s['redis_cpu_us_per_event']:.1f} = {per_event:.1f} us per event on {cpus} shared cores"
                     f" (<= {cpus / per_event * 1e6:,.0f} events/s if perfectly parallel); Redis, single-threaded,"
                     f" is the serial part")
        transport = s.get("transport_redis_cpu_us_per_event")
        if transport:
            redis_bound = 1e6 / s["redis_cpu_us_per_event"]
            notes.append(f"ratio: the transport is bound by Python (Redis spends {transport:.1f} us per event on it),"
                         f" the engine by Redis ({s['redis_cpu_us_per_event']:.1f} us per event): even with a core of"
                         f" its own Redis would pass at most {redis_bound:,.0f} events/s, a ratio of"
                         f" {redis_bound / s['transport_events_per_s']:.2f}; here it shares 2 cores with the rest")
    if s["apply_us_per_event"] > 6:
        rules = s["apply_us_per_event"] - s["no_rules_apply_us_per_event"]
        notes.append(f"apply: {s['apply_us_per_event']:.1f} us per event = 1 XACK + the state of each user touched"
                     f" (GET + unpack, pack + SET; batches span milliseconds, users click every few seconds, so"
                     f" nearly every event is a fresh touch) + closing sessions (XADD, profile fold) + the rule set"
                     f" ({rules:.1f} us); AOF adds the propagation of every write")
    if s["fixed_rate_latency_ms"].get("p99", 0) > 50:
        notes.append("latency: an alert waits for the consumer's next read round (read, decode, apply every owned"
                     " partition) plus linger_ms; at this load a round takes tens of ms")
    return notes


if __name__ == "__main__":
    if sys.argv[1] == "_transport":
        _transport_worker(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "_subscribe":
        _subscriber(sys.argv[2], sys.argv[3], sys.argv[4])

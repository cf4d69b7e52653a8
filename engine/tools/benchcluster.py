"""``shopstream bench --cluster N``: the engine on one redis-server and on an N-master Redis
Cluster, both started here, same events, same consumers, runs alternating; medians reported.

The cluster has no replicas (a single redis-server has none either) and the same persistence.
On a machine with fewer cores than masters + consumers + producer, expect little or no gain:
the masters share the cores.  The per-master numbers say what separate machines would give:
a shard's Redis CPU per event of its own traffic bounds that shard's throughput, and the
cluster's throughput is that times the number of masters, if the consumers and producers scale
out with it (they are stateless; partitions spread them).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

from .bench import _machine, run_stage
from .benchdata import generate
from .servers import embedded_cluster, embedded_redis
from ..settings import Settings


def run(events: int, users: int, runs: int, consumers: int, masters: int, appendfsync: str,
        json_out: str | None) -> dict:
    print(f"generating {events:,} events ({users:,} users)...", flush=True)
    payloads = generate(events, users=users)
    base = Settings(metrics_port=None, idle_timeout_ms=0)
    aof = ["--appendonly", "no"] if appendfsync == "no" else ["--appendonly", "yes", "--appendfsync", appendfsync]
    pairs = []
    with embedded_redis(*aof) as single, embedded_cluster(masters, 0, extra_args=aof) as cluster:
        for r in range(runs):
            one = run_stage(single, base, payloads, "engine", consumers, base.partitions)
            many = run_stage(cluster.url, base, payloads, f"engine@cluster{masters}", consumers, base.partitions)
            pairs.append((one, many))
            print(f"run {r + 1}/{runs}: single node {one.events_per_s:,.0f}/s  {masters}-master cluster "
                  f"{many.events_per_s:,.0f}/s", flush=True)
    med = lambda pick: {side: statistics.median(pick(p[i]) for p in pairs)  # noqa: E731
                        for i, side in enumerate(("single", "cluster"))}
    summary = {
        "masters": masters, "consumers": consumers, "partitions": base.partitions,
        "events_per_s": med(lambda s: s.events_per_s),
        "redis_cpu_us_per_event": med(lambda s: s.redis_cpu_us_per_event),
        "busiest_master_cpu_us_per_event": med(lambda s: s.busiest_master_cpu_us_per_event),
        "apply_us_per_event": med(lambda s: s.apply_us_per_event),
        "consumer_cpu_us_per_event": med(lambda s: s.consumer_cpu_us_per_event),
        "producer_cpu_us_per_event": med(lambda s: s.producer_cpu_us_per_event),
    }
    report = {"machine": {**_machine(), "appendfsync": appendfsync}, "events": events, "runs": runs,
              "stages": [asdict(s) for pair in pairs for s in pair], "summary": summary}
    print_table(report)
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {json_out}")
    return report


def print_table(report: dict) -> None:
    s, m = report["summary"], report["machine"]
    n = s["masters"]
    print(f"\nShopStream bench --cluster {n} - {report['events']:,} events, {s['consumers']} consumers, "
          f"{s['partitions']} partitions, {m['cpus']} CPUs, redis {m['redis']} (appendfsync {m['appendfsync']}), "
          f"{m['date']} (medians of {report['runs']} runs)")
    rows = [("engine end to end, events/s", "events_per_s", "{:,.0f}"),
            ("Redis CPU per event, all masters, us", "redis_cpu_us_per_event", "{:.2f}"),
            ("Redis CPU per event, busiest master, us", "busiest_master_cpu_us_per_event", "{:.2f}"),
            ("apply script, Redis time per event, us", "apply_us_per_event", "{:.2f}"),
            ("consumer (Python) CPU per event, us", "consumer_cpu_us_per_event", "{:.2f}"),
            ("producer (Python) CPU per event, us", "producer_cpu_us_per_event", "{:.2f}")]
    print(f"  {'':<42} {'single node':>12} {f'{n} masters':>12}")
    for label, key, fmt in rows:
        print(f"  {label:<42} {fmt.format(s[key]['single']):>12} {fmt.format(s[key]['cluster']):>12}")
    busiest = s["busiest_master_cpu_us_per_event"]["cluster"]
    ceiling = 1e6 / s["redis_cpu_us_per_event"]["single"]
    print(f"  Redis-bound ceiling with a core per Redis: single node {ceiling:,.0f}/s; cluster "
          f"{1e6 / busiest:,.0f}/s (its busiest master's share), consumers and producers scaled out alongside")

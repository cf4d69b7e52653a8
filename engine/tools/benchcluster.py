"""``shopstream bench --cluster N``: the engine on one redis-server and on an N-master Redis
Cluster, both started here, same mixed traffic (benchdata.generate_mixed), same consumers, runs
alternating; medians reported.  Each run has two stages per side: the engine with the producer
unpaced (throughput, CPU per event) and the engine at a fixed offered rate (detection latency,
per rule, as in the main bench).

The cluster has no replicas (a single redis-server has none either) and the same persistence.
Redis runs a script on one thread: one redis-server uses one core whatever the machine has, and
N masters can use N.  On a machine with fewer cores than masters + consumers + producer the
masters share the cores.  The per-master numbers say what separate machines would give: a shard's
Redis CPU per event of its own traffic bounds that shard's throughput, and the cluster's
throughput is that times the number of masters, if the consumers and producers scale out with it
(they are stateless; partitions spread them).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

from .bench import RULE_GROUPS, Stage, _machine, run_stage
from .benchdata import Mixed, generate_mixed, subject_triggers
from .servers import embedded_cluster, embedded_redis
from ..settings import Settings

SIDES = ("single", "cluster")
LATENCY_TARGET_MS = 1000          # issue 16: every decision within 1 s of its triggering event (p99)
# the decisions the bench times: those an entry triggers, and those of the re-keyed rules (published
# with the member record in the user's partition, bench.py _rule_latencies)
DECISIONS = ("decision", "ip_users (ip) member", "card_testing (card) member")


def run(events: int, users: int, runs: int, consumers: int, masters: int, appendfsync: str,
        json_out: str | None, rate: float = 16_667, latency_events: int | None = None) -> dict:
    print(f"generating {events:,} events of mixed traffic ({users:,} users)...", flush=True)
    mixed = generate_mixed(events, users=users)
    triggers = subject_triggers(mixed)
    n_rate = min(latency_events or events, events)
    at_rate = Mixed(mixed.sources[:n_rate], mixed.payloads[:n_rate])
    base = Settings(metrics_port=None, idle_timeout_ms=0)
    aof = ["--appendonly", "no"] if appendfsync == "no" else ["--appendonly", "yes", "--appendfsync", appendfsync]
    pairs: list[tuple[Stage, Stage]] = []
    paced: list[tuple[Stage, Stage]] = []
    stages: list[Stage] = []
    with embedded_redis(*aof) as single, embedded_cluster(masters, 0, extra_args=aof) as cluster:
        for r in range(runs):
            one = run_stage(single, base, mixed, "engine", consumers, base.partitions, triggers=triggers)
            many = run_stage(cluster.url, base, mixed, f"engine@cluster{masters}", consumers, base.partitions,
                             triggers=triggers)
            slow = run_stage(single, base, at_rate, "engine@rate", consumers, base.partitions, rate=rate,
                             triggers=triggers)
            fast = run_stage(cluster.url, base, at_rate, f"engine@rate-cluster{masters}", consumers, base.partitions,
                             rate=rate, triggers=triggers)
            pairs.append((one, many))
            paced.append((slow, fast))
            stages += [one, many, slow, fast]
            print(f"run {r + 1}/{runs}: single node {one.events_per_s:,.0f}/s, decision p99 {_p99(slow):,.0f} ms;"
                  f"  {masters}-master cluster {many.events_per_s:,.0f}/s, decision p99 {_p99(fast):,.0f} ms",
                  flush=True)
    report = {"machine": {**_machine(), "appendfsync": appendfsync}, "events": events, "runs": runs,
              "mix": mixed.counts(), "stages": [asdict(s) for s in stages],
              "summary": summarize(pairs, paced, masters, consumers, base.partitions, rate)}
    if json_out:                          # first: a run of many minutes is kept whatever the table does
        Path(json_out).write_text(json.dumps(report, indent=1))
    print_table(report)
    if json_out:
        print(f"\nwrote {json_out}")
    return report


def _p99(stage: Stage) -> float:
    return stage.latency_by_rule.get("decision", {}).get("p99", 0.0)


def summarize(pairs: list[tuple[Stage, Stage]], paced: list[tuple[Stage, Stage]], masters: int, consumers: int,
              partitions: int, rate: float) -> dict:
    """Medians over the runs, per side; the latency of each rule (group) at the fixed rate."""
    def med(group, pick):
        return {side: statistics.median(pick(p[i]) for p in group) for i, side in enumerate(SIDES)}

    rules = [r for r in RULE_GROUPS if any(r in s.latency_by_rule for pair in paced for s in pair)]

    def latency(q):
        return {rule: med(paced, lambda s, r=rule: s.latency_by_rule.get(r, {}).get(q, 0.0)) for rule in rules}
    return {
        "masters": masters, "consumers": consumers, "partitions": partitions,
        "events_per_s": med(pairs, lambda s: s.events_per_s),
        "redis_cpu_us_per_event": med(pairs, lambda s: s.redis_cpu_us_per_event),
        "busiest_master_cpu_us_per_event": med(pairs, lambda s: s.busiest_master_cpu_us_per_event),
        "apply_us_per_event": med(pairs, lambda s: s.apply_us_per_event),
        "consumer_cpu_us_per_event": med(pairs, lambda s: s.consumer_cpu_us_per_event),
        "producer_cpu_us_per_event": med(pairs, lambda s: s.producer_cpu_us_per_event),
        "rate": rate,
        "rate_offered_events_per_s": med(paced, lambda s: s.offered_per_s),
        "rate_drained_events_per_s": med(paced, lambda s: s.events_per_s),
        "rate_redis_cpu_us_per_event": med(paced, lambda s: s.redis_cpu_us_per_event),
        "rate_events_per_apply_call": med(paced, lambda s: s.events / max(s.apply_calls, 1)),
        "latency_p50_ms": latency("p50"), "latency_p99_ms": latency("p99"), "latency_n": latency("n"),
    }


def print_table(report: dict) -> None:
    s, m = report["summary"], report["machine"]
    n = s["masters"]
    mix = report.get("mix", {})
    print(f"\nShopStream bench --cluster {n} - {report['events']:,} events ({', '.join(f'{v:,} {k}' for k, v in mix.items())}),"
          f" {s['consumers']} consumers, {s['partitions']} partitions, {m['cpus']} CPUs, redis {m['redis']}"
          f" (appendfsync {m['appendfsync']}), {m['date']} (medians of {report['runs']} runs)")
    rows = [("engine end to end, events/s", "events_per_s", "{:,.0f}"),
            ("Redis CPU per event, all masters, us", "redis_cpu_us_per_event", "{:.2f}"),
            ("Redis CPU per event, busiest master, us", "busiest_master_cpu_us_per_event", "{:.2f}"),
            ("apply script, Redis time per event, us", "apply_us_per_event", "{:.2f}"),
            ("consumer (Python) CPU per event, us", "consumer_cpu_us_per_event", "{:.2f}"),
            ("producer (Python) CPU per event, us", "producer_cpu_us_per_event", "{:.2f}"),
            (f"at {s['rate']:,.0f} events/s: offered, events/s", "rate_offered_events_per_s", "{:,.0f}"),
            (f"at {s['rate']:,.0f} events/s: drained, events/s", "rate_drained_events_per_s", "{:,.0f}"),
            (f"at {s['rate']:,.0f} events/s: Redis CPU per event, us", "rate_redis_cpu_us_per_event", "{:.1f}"),
            (f"at {s['rate']:,.0f} events/s: events per apply call", "rate_events_per_apply_call", "{:,.0f}")]
    width = 82
    print(f"  {'':<{width}} {'single node':>14} {f'{n} masters':>14}")
    for label, key, fmt in rows:
        print(f"  {label:<{width}} {fmt.format(s[key]['single']):>14} {fmt.format(s[key]['cluster']):>14}")
    print(f"  detection latency at {s['rate']:,.0f} events/s ({s['rate'] * 60 / 1e6:.1f}M/min), p50 / p99 ms:")
    for rule in s["latency_p99_ms"]:
        group = "" if RULE_GROUPS[rule] == rule else f" ({RULE_GROUPS[rule]})"
        label = f"    {rule}{group}, n {s['latency_n'][rule]['single']:,.0f} / {s['latency_n'][rule]['cluster']:,.0f}"
        cells = [f"{s['latency_p50_ms'][rule][side]:,.0f} / {s['latency_p99_ms'][rule][side]:,.0f}" for side in SIDES]
        print(f"  {label:<{width}} {cells[0]:>14} {cells[1]:>14}")
    decisions = [r for r in DECISIONS if r in s["latency_p99_ms"]]
    for side in SIDES:
        if not decisions:
            break
        worst = max(decisions, key=lambda r: s["latency_p99_ms"][r][side])
        p99 = s["latency_p99_ms"][worst][side]
        kept_up = s["rate_offered_events_per_s"][side] >= 0.97 * s["rate"]
        met = p99 <= LATENCY_TARGET_MS and kept_up
        print(f"  every timed decision p99 <= {LATENCY_TARGET_MS:,} ms at {s['rate']:,.0f} events/s, {side}:"
              f" {'met' if met else 'MISSED'} (the slowest: {worst} {p99:,.0f} ms"
              + ("" if kept_up else "; the producer fell behind") + ")")
    busiest = s["busiest_master_cpu_us_per_event"]["cluster"]
    ceiling = 1e6 / s["redis_cpu_us_per_event"]["single"]
    print(f"  Redis-bound ceiling with a core per Redis: single node {ceiling:,.0f}/s; cluster "
          f"{1e6 / busiest:,.0f}/s (its busiest master's share), consumers and producers scaled out alongside")

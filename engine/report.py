"""Human-readable terminal output: the run/demo summary and live queries."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from .eventtime import US_PER_MINUTE, format_us
from .keys import MINUTES, OPEN_MINUTES, SESSIONS, Keys
from .settings import Settings


def _bar(value: int, top: int, width: int = 40) -> str:
    return "#" * max(1 if value else 0, round(width * value / top)) if top else ""


def print_minute_chart(minutes: list[dict], rows: int = 24) -> None:
    """Events per minute, folded into at most ``rows`` lines."""
    if not minutes:
        print("  (no finalized minutes)")
        return
    step = max(1, -(-len(minutes) // rows))
    groups = [minutes[i:i + step] for i in range(0, len(minutes), step)]
    sums = [(g[0]["minute"][:16].replace("T", " "), sum(m["events"] for m in g) / len(g),
             max(m["unique_users"] for m in g)) for g in groups]
    top = max(s[1] for s in sums)
    label = "minute" if step == 1 else f"{step}-min block"
    print(f"  {label:<16}  {'events/min':>10}  {'max users/min':>13}")
    for start, events, users in sums:
        print(f"  {start:<16}  {events:>10,.0f}  {users:>13,}  {_bar(int(events), int(top))}")


def print_alerts(records: list[dict]) -> None:
    """Alerts per rule.  A subject alert (an IP, a card) is one record; each user it involves also
    gets a member record (evidence {"role": "member"}): those are links, not alerts, and said apart."""
    alerts = [a for a in records if a["evidence"] != {"role": "member"} and a["rule"] != "decision"]
    members = Counter(a["rule"] for a in records if a["evidence"] == {"role": "member"})
    print(f"\nAlerts: {len(alerts):,}" + (f" (and {sum(members.values()):,} member records linking users to"
                                          " IP and card alerts)" if members else ""))
    for rule, n in sorted(Counter(a["rule"] for a in alerts).items()):
        subjects = Counter(kind for kind, _ in {(a["subject_kind"], a["subject"]) for a in alerts if a["rule"] == rule})
        linked = f", {members[rule]} users linked" if members[rule] else ""
        print(f"  {rule:<22} {n:>4}  on " + ", ".join(f"{k} {kind}{'s' if k > 1 else ''}" for kind, k in sorted(subjects.items()))
              + linked)


def print_run(result: Any, out_dir: str | Path, detailed: bool, truth: Path | None = None) -> None:
    o, st = result.outputs, result.state
    published = sum(n for kind, n in result.published.items() if kind != "catalog")
    dead = [d for d in o.dlq if not d["stream"].endswith(":catalog")]
    total = st["applied"] + st["late"] + len(dead) + st["erased"]
    rate = published / max(result.seconds_consume, 1e-9)
    names = {"catalog": "catalog products", "clicks": "clicks", "tx": "transactions", "support": "support tickets"}
    sources = ", ".join(f"{n:,} {names.get(kind, kind)}" for kind, n in result.published.items())
    print(f"Input: {sources}; replayed in {result.seconds_replay:.2f} s, consumed in "
          f"{result.seconds_consume:.2f} s ({rate:,.0f} events/s including process start-up; the consumers run"
          f" during the replay), flushed in {result.seconds_flush:.2f} s, exported in {result.seconds_export:.2f} s")
    print(f"  applied {st['applied']:,} | late {st['late']:,} | dead-letter {len(dead):,} | "
          f"duplicates skipped {st['duplicates']:,} | accounted for {total:,} of {published:,}")
    users = {s["user_id"] for s in o.sessions}
    print(f"Sessions: {len(o.sessions):,} for {len(users):,} users "
          f"(30-min inactivity gap; {result.sessions_flushed:,} closed by the final flush)")
    if o.sessions:
        lengths = sorted(s["event_count"] for s in o.sessions)
        print(f"  events per session: median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    print(f"Minutes: {len(o.minutes):,} finalized, "
          f"{sum(m['events'] for m in o.minutes):,} events counted")
    print(f"Profiles: {len(o.profiles):,} customers (`shopstream profile USER`)")
    if detailed:
        print("\nEvents per minute (event time, UTC):")
        print_minute_chart(o.minutes)
    print_alerts(o.alerts)
    actions = final_actions(o.alerts)
    print("Decisions (each customer's action now, from the risk score; allow for everyone else): "
          + ", ".join(f"{a} {n:,}" for a, n in Counter(d["action"] for d in actions.values()).most_common()))
    flagged = sorted((d for d in actions.values() if d["action"] in FLAGGED), key=lambda d: -(d["score"] or 0))
    for d in flagged[:8 if detailed else 3]:
        why = ", ".join(f"{r['code']} {r['points']:g}" for r in d["reasons"][:4])
        print(f"  {d['user_id']!r:<24} {d['action']:<7} score {d['score']:>6.1f}  ({why})")
    if truth is not None and truth.is_file():
        print_truth_check(flagged, truth)
    if detailed and (o.dlq or o.late):
        print(f"\nDead-letter stream: {len(o.dlq):,} records (kept with the reason)")
        for reason, n in Counter(d["reason"] for d in o.dlq).most_common(5):
            print(f"  {n:>4} x {reason[:110]}")
        print(f"Late events: {len(o.late):,} (more than the session gap behind the watermark; kept in the late stream)")
    print(f"\nExport: {Path(out_dir).resolve()}/  " + ", ".join(f"{k}.jsonl ({v:,})" for k, v in result.written.items()))
    if detailed:
        print("\nNext: run the pieces against your own Redis and look inside with redis-cli (README), "
              "or measure with `make bench`.")


FLAGGED = ("review", "block")      # the actions that put a customer in front of an analyst or stop them
ORDER = ("allow", "step_up", "review", "block")


def final_actions(alerts: list[dict]) -> dict[str, dict]:
    """Each user's strongest decision that no retraction took back (engine/export.py decision_records;
    the same rule as engine/evaluation.py flagged)."""
    from .export import decision_records
    out: dict[str, dict] = {}
    for d in decision_records(alerts):
        held = out.get(d["user_id"])
        if d["retraction"] or held is None or ORDER.index(d["action"]) >= ORDER.index(held["action"]):
            out[d["user_id"]] = d
    return out


def truth_check(flagged: set[str], truth_file: Path) -> dict:
    """Precision and recall of the flagged users against the generator's ground truth."""
    truth = {}
    for line in truth_file.read_text().splitlines():
        row = json.loads(line)
        truth[row["user_id"]] = row["pattern"]
    caught = flagged & truth.keys()
    return {"planted": len(truth), "caught": len(caught), "false_alarms": sorted(flagged - truth.keys()),
            "missed": sorted(truth.keys() - flagged), "patterns": truth,
            "precision": len(caught) / len(flagged) if flagged else 1.0,
            "recall": len(caught) / len(truth) if truth else 1.0}


def print_truth_check(risky: list[dict], truth_file: Path) -> None:
    check = truth_check({p["user_id"] for p in risky}, truth_file)
    print(f"Against {truth_file.name}: {check['caught']} of {check['planted']} planted fraudsters caught "
          f"(recall {check['recall']:.0%}), {len(check['false_alarms'])} clean customer(s) flagged "
          f"(precision {check['precision']:.0%})")
    by_pattern = Counter(check["patterns"][u] for u in check["patterns"] if u not in check["missed"])
    print("  caught by pattern: " + ", ".join(f"{k} {n}" for k, n in sorted(by_pattern.items())))
    if check["missed"]:
        print("  missed: " + ", ".join(check["missed"]))
    if check["false_alarms"]:
        print("  flagged but clean: " + ", ".join(check["false_alarms"]))


def print_profile(profile: dict | None, user: str, settings: Settings) -> None:
    from .partitioning import partition_of
    part = Keys(settings.namespace, settings.partitions).partition(partition_of(user, settings.partitions))
    print(f"user {user!r} lives in partition {part.p} ({part.profile(user)})")
    if profile is None:
        print("  no profile (never seen, erased, or expired)")
        return
    width = max(len(k) for k in profile)
    for name, value in profile.items():
        if name != "user_id":
            print(f"  {name:<{width}}  {value}")


def live_minutes(client: Any, settings: Settings) -> dict[int, list[int]]:
    """Open (not yet finalized) minute -> [events, unique users], summed over the partitions: their
    users are disjoint, so the global unique count is the sum of the partitions' HyperLogLogs, and
    on a Redis Cluster every partition's keys are read on the master that holds them."""
    keys = Keys(settings.namespace, settings.partitions)
    live: dict[int, list[int]] = {}
    for part in keys.all_partitions():
        for m in client.zrange(part.key(OPEN_MINUTES), 0, -1):
            m = int(m)
            acc = live.setdefault(m, [0, 0])
            acc[0] += int(client.get(part.count(m)) or 0)
            acc[1] += client.pfcount(part.hll(m))
    return live


def print_live_minutes(client: Any, settings: Settings, last: int) -> None:
    """Open minutes (live counters) and the most recent finalized ones, summed over partitions."""
    keys = Keys(settings.namespace, settings.partitions)
    live = live_minutes(client, settings)
    done: dict[int, list[int]] = {}
    for part in keys.all_partitions():
        for _, f in client.xrevrange(part.key(MINUTES), count=last):
            acc = done.setdefault(int(f[b"minute"]) // US_PER_MINUTE, [0, 0])
            acc[0] += int(f[b"events"])
            acc[1] += int(f[b"unique_users"])
    rows = sorted([(m, *v, "final") for m, v in done.items()] + [(m, *v, "open") for m, v in live.items()])[-last:]
    print(f"{'minute (UTC)':<20} {'events':>8} {'users':>7}  state")
    for m, events, users, state in rows:
        print(f"{format_us(m * US_PER_MINUTE)[:16]:<20} {events:>8,} {users:>7,}  {state}")


def print_user_sessions(client: Any, settings: Settings, user: str) -> None:
    from .partitioning import partition_of
    part = Keys(settings.namespace, settings.partitions).partition(partition_of(user, settings.partitions))
    state = client.get(part.user(user))
    print(f"user {user!r} lives in partition {part.p} ({part.user(user)})")
    if state:
        doc = json.loads(state) if state[:1] == b"{" else msgspec.msgpack.decode(state)  # JSON: earlier versions
        for start, offset, n, types, *_ in doc["s"]:
            start = int(start)
            print(f"  open   {format_us(start)} .. {format_us(start + offset)}  {n} events  {json.dumps(types)}")
    for _, f in client.xrange(part.key(SESSIONS)):
        if f[b"user_id"].decode() == user:
            print(f"  closed {format_us(int(f[b'start']))} .. {format_us(int(f[b'end']))}  "
                  f"{int(f[b'event_count'])} events  {f[b'types'].decode()}")
    if not state:
        print("  no open session")

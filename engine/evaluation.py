"""Scoring the engine against labelled scenarios (pure: no Redis, no files).

Input: the labels of a scenario library (docs/rules.md, "Scenario library and evaluation"), and
what the engine decided: ``decisions.jsonl`` records when the export has them, else the alerts.
Output: per-pattern recall, precision, the ordinary customers flagged and by what, detection
delay in event time; ``check`` says which targets are missed; ``shadow_diff`` compares two runs.
The I/O around it (running the engine, printing) is engine/evaluate.py.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from .eventtime import parse_timestamp
from .report import FLAGGED

NAMED_RECALL, UNNAMED_RECALL, PRECISION = 0.90, 0.70, 0.95


@dataclass(frozen=True)
class Label:
    user_id: str
    pattern: str
    fraud: bool
    named: bool
    fraud_at_us: int | None = None

    @classmethod
    def of(cls, rec: dict) -> "Label":
        at = rec.get("fraud_at")
        return cls(rec["user_id"], rec["pattern"], bool(rec["fraud"]), bool(rec.get("named", True)),
                   parse_timestamp(at) if at else None)


@dataclass(frozen=True)
class Flag:
    """Why and when a user counts as flagged: the reasons (reason codes or rule names) and the
    event time of the decision (µs; None when the output does not say)."""

    reasons: tuple[str, ...]
    event_us: int | None


def _time(value) -> int | None:
    try:
        return parse_timestamp(value) if value not in (None, "") else None
    except Exception:
        return None


def flagged(decisions: list[dict] | None, alerts: list[dict]) -> dict[str, Flag]:
    """THE definition of "flagged" (one place, so it can be switched).

    With decisions (``decisions.jsonl``, in file order): a user is flagged when a decision put them
    at review or block (engine/report.py FLAGGED: step_up is a challenge, friction, not a flag) and
    no retraction took it back since (a score that decays later does not undo a decision that was
    made); the reasons are the codes of the strongest flagging decision, the time the event time of
    the decision that flagged the user for good.  Without them (``decisions is None``): a user is flagged when an alert names them
    (member records of IP / card alerts included); the reasons are the rule names, the time the
    earliest alert's window start (an approximation: alerts carry no event time of their own)."""
    out: dict[str, Flag] = {}
    if decisions is not None:
        by_user: dict[str, list[dict]] = defaultdict(list)
        for d in decisions:
            by_user[d["user_id"]].append(d)
        for uid, ds in by_user.items():
            since = None                 # the decision that flagged the user for good, if any
            for i, d in enumerate(ds):
                action = d.get("action", "allow")
                if action in FLAGGED and since is None:
                    since = i
                elif d.get("retraction") and action not in FLAGGED:
                    since = None         # taken back (a decayed score is not: the decision was made)
            if since is None:
                continue
            last = max((d for d in ds[since:] if d.get("action") in FLAGGED), key=lambda d: d.get("score") or 0)
            reasons = tuple(sorted({r["code"] if isinstance(r, dict) else str(r) for r in last.get("reasons") or []}))
            out[uid] = Flag(reasons or (last["action"],), _time(ds[since].get("event_time")))
        return out
    rules: dict[str, set[str]] = defaultdict(set)
    times: dict[str, int | None] = {}
    for a in alerts:
        uid = a.get("user_id")
        if not uid:
            continue
        rules[uid].add(a["rule"])
        t = _time(a.get("window_start"))
        if uid not in times or (t is not None and (times[uid] is None or t < times[uid])):
            times[uid] = t
    return {uid: Flag(tuple(sorted(r)), times.get(uid)) for uid, r in rules.items()}


def fired(decisions: list[dict] | None, alerts: list[dict]) -> dict[str, set[str]]:
    """Every reason code (decisions that are not "allow") or rule (alerts) raised per user, for the
    shadow comparison."""
    out: dict[str, set[str]] = defaultdict(set)
    if decisions is not None:
        for d in decisions:
            if d.get("action", "allow") != "allow" and not d.get("retraction"):
                out[d["user_id"]].update(r["code"] if isinstance(r, dict) else str(r) for r in d.get("reasons") or [])
    else:
        for a in alerts:
            if a.get("user_id"):
                out[a["user_id"]].add(a["rule"])
    return dict(out)


@dataclass
class PatternRow:
    pattern: str
    fraud: bool
    named: bool
    actors: int = 0
    flagged: int = 0
    reasons: Counter = field(default_factory=Counter)   # reason -> users flagged with it
    users: list[str] = field(default_factory=list)      # flagged users
    delays_s: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.flagged / self.actors if self.actors else 0.0


@dataclass
class Report:
    rows: list[PatternRow]
    true_pos: int
    false_pos: int
    unlabelled: list[str]            # flagged users the labels do not know
    source: str                      # "decisions" or "alerts"

    @property
    def precision(self) -> float:
        flagged = self.true_pos + self.false_pos
        return self.true_pos / flagged if flagged else 1.0

    def recall(self, named: bool) -> float:
        rows = [r for r in self.rows if r.fraud and r.named == named]
        actors = sum(r.actors for r in rows)
        return sum(r.flagged for r in rows) / actors if actors else 1.0

    def delays(self) -> list[float]:
        return sorted(d for r in self.rows if r.fraud for d in r.delays_s)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (None when empty)."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values), max(1, math.ceil(q * len(values)))) - 1]


def score(labels: Iterable[Label], flags: dict[str, Flag], source: str = "alerts") -> Report:
    rows: dict[str, PatternRow] = {}
    tp = fp = 0
    known = set()
    for lab in labels:
        known.add(lab.user_id)
        row = rows.setdefault(lab.pattern, PatternRow(lab.pattern, lab.fraud, lab.named))
        row.actors += 1
        flag = flags.get(lab.user_id)
        if flag is None:
            continue
        row.flagged += 1
        row.users.append(lab.user_id)
        row.reasons.update(flag.reasons)
        if lab.fraud:
            tp += 1
            if flag.event_us is not None and lab.fraud_at_us is not None:
                row.delays_s.append(max(0, flag.event_us - lab.fraud_at_us) / 1e6)
        else:
            fp += 1
    order = sorted(rows.values(), key=lambda r: (not r.fraud, not r.named, r.pattern))
    return Report(order, tp, fp, sorted(set(flags) - known), source)


def check(report: Report) -> list[str]:
    """The targets of issue 16 this report misses (empty: all met)."""
    out = []
    for r in report.rows:
        if r.fraud and r.named and r.recall < NAMED_RECALL:
            out.append(f"recall of {r.pattern} {r.recall:.0%} < {NAMED_RECALL:.0%}")
        if not r.fraud and r.flagged:
            out.append(f"{r.flagged} ordinary customers of {r.pattern} flagged")
    if any(r.fraud and not r.named for r in report.rows) and report.recall(False) < UNNAMED_RECALL:
        out.append(f"recall on unnamed patterns {report.recall(False):.0%} < {UNNAMED_RECALL:.0%}")
    if report.precision < PRECISION:
        out.append(f"precision {report.precision:.1%} < {PRECISION:.0%}")
    return out


def shadow_diff(live: dict[str, set[str]], shadow: dict[str, set[str]]) -> dict[str, list[tuple[str, str]]]:
    """(user, reason) raised by one run and not by the other: {"live_only": [...], "shadow_only": [...]}."""
    def only(a, b):
        return sorted((u, r) for u in a for r in a[u] - b.get(u, set()))
    return {"live_only": only(live, shadow), "shadow_only": only(shadow, live)}


def _pct(x: float) -> str:
    return f"{x:6.1%}"


def _delay(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 0.5):.0f}s / {percentile(values, 0.9):.0f}s"


def render(report: Report) -> str:
    """The evaluation table as text."""
    lines = [f"flagged = {'a review or block decision not retracted (decisions.jsonl)' if report.source == 'decisions' else 'named by an alert (alerts.jsonl; no decisions in the export)'}",
             "", f"{'fraud pattern':<28} {'named':<6} {'actors':>6} {'caught':>6} {'recall':>7}  delay p50 / p90",]
    for r in report.rows:
        if r.fraud:
            lines.append(f"{r.pattern:<28} {'yes' if r.named else 'no':<6} {r.actors:>6} {r.flagged:>6} {_pct(r.recall)}  {_delay(r.delays_s)}")
    lines += ["", f"recall, named patterns   {_pct(report.recall(True))}",
              f"recall, unnamed patterns {_pct(report.recall(False))}",
              f"precision                {_pct(report.precision)}  ({report.true_pos} fraudsters and "
              f"{report.false_pos} ordinary customers flagged)",
              f"detection delay (event time) p50 / p90: {_delay(report.delays())}"
              + ("  (alert window start: approximate)" if report.source == "alerts" else ""),
              "", f"{'ordinary class':<28} {'issue':<6} {'actors':>6} {'flagged':>7}  by what"]
    for r in report.rows:
        if not r.fraud:
            why = ", ".join(f"{k} {v}" for k, v in r.reasons.most_common())
            lines.append(f"{r.pattern:<28} {'yes' if r.named else 'no':<6} {r.actors:>6} {r.flagged:>7}  {why}")
    if report.unlabelled:
        lines.append(f"\nflagged users without a label: {len(report.unlabelled)} ({', '.join(report.unlabelled[:5])}...)")
    return "\n".join(lines)


def as_json(report: Report) -> dict:
    return {"source": report.source, "precision": report.precision, "recall_named": report.recall(True),
            "recall_unnamed": report.recall(False), "true_positives": report.true_pos,
            "false_positives": report.false_pos, "delay_p50_s": percentile(report.delays(), 0.5),
            "delay_p90_s": percentile(report.delays(), 0.9), "unlabelled_flagged": report.unlabelled,
            "patterns": [{"pattern": r.pattern, "fraud": r.fraud, "named": r.named, "actors": r.actors,
                          "flagged": r.flagged, "recall": r.recall, "reasons": dict(r.reasons),
                          "flagged_users": r.users, "delay_p50_s": percentile(r.delays_s, 0.5),
                          "delay_p90_s": percentile(r.delays_s, 0.9)} for r in report.rows],
            "failures": check(report)}

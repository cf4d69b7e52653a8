"""Export contract: the output streams as JSON Lines files (timestamps ISO-8601 UTC, ms, Z).

    sessions.jsonl  user_id, session_id, start, end, event_count, counts {event_type: n},
                    categories {catalog category: product views}
    minutes.jsonl   minute, events, unique_users       (finalized minutes, all partitions summed)
    alerts.jsonl    rule, severity, subject_kind (user | ip | card), subject, user_id (the user; ''
                    for an IP / card alert, whose users get member records), window_start, count,
                    threshold, evidence {...}, detected_at
    late.jsonl      user_id, timestamp, watermark, reason, record
    dlq.jsonl       reason, record, stream, entry_id   (once per input entry)
    profiles.jsonl  user_id and the profile's fields (lua/includes/profile.lua), numbers as numbers
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from .connection import is_cluster_client
from .contract import ProfileArgs
from .eventtime import format_us, format_us_exact
from .keys import ALERTS, LATE, MINUTES, PROFILE, SESSIONS, USER, Keys, glob_escape
from .partitioning import partition_of
from .scripts import Scripts
from .settings import Settings
from .streams import pages

PROFILE_READS = 32


async def read_stream(client: Any, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return [entry async for page in pages(client, key) for entry in page]


def _s(value: bytes) -> str:
    return value.decode("utf-8", "replace")


_counts = msgspec.json.Decoder(dict[str, int])


def session_record(f: dict[bytes, bytes]) -> dict:
    return {"user_id": _s(f[b"user_id"]), "session_id": _s(f[b"session_id"]),
            "start": format_us(int(f[b"start"])), "end": format_us(int(f[b"end"])),
            "event_count": int(f[b"event_count"]), "counts": _counts.decode(f[b"types"]),
            "categories": _counts_or_empty(f.get(b"categories", b"{}"))}


def _counts_or_empty(raw: bytes) -> dict[str, int]:
    """A JSON object of counts; Lua's cjson may write an empty one as []."""
    return {} if raw == b"[]" else _counts.decode(raw)


def alert_record(f: dict[bytes, bytes]) -> dict:
    return {"rule": _s(f[b"rule"]), "severity": _s(f[b"severity"]), "subject_kind": _s(f[b"subject_kind"]),
            "subject": _s(f[b"subject"]), "user_id": _s(f[b"user_id"]),
            "window_start": format_us(int(f[b"window_start"])), "count": int(f[b"count"]),
            "threshold": int(f[b"threshold"]), "evidence": evidence_record(f[b"evidence"]),
            "detected_at": format_us(int(f[b"detected_at"]))}


_evidence = msgspec.json.Decoder(dict | list)


def decode_evidence(raw: bytes) -> dict | list:
    """An alert's evidence field (JSON written by lua/includes/rules.lua)."""
    return _evidence.decode(raw)


def evidence_record(raw: bytes) -> dict | list:
    """The evidence as exported: a time the script wrote as ``<name>_ms`` becomes ``<name>``, ISO-8601."""
    evidence = decode_evidence(raw)
    if not isinstance(evidence, dict):
        return evidence
    out = {}
    for name, value in evidence.items():
        if name.endswith("_ms") and isinstance(value, int):
            name, value = name[:-3], format_us(value * 1000)
        out[name] = value
    return out


def decision_records(alerts: list[dict]) -> list[dict]:
    """The decisions among the alert records (rule 'decision', lua/includes/score.lua), in order:
    a user's last one holds their action now (a retraction lowers it)."""
    out = []
    for a in alerts:
        if a["rule"] != "decision":
            continue
        ev = a["evidence"] if isinstance(a["evidence"], dict) else {}
        reasons = ev.get("reasons")
        out.append({"user_id": a["user_id"], "action": ev.get("action", a["severity"]), "score": ev.get("score"),
                    "reasons": reasons if isinstance(reasons, list) else [], "trigger": ev.get("trigger"),
                    "retraction": bool(ev.get("retraction")), "event_time": a["window_start"],
                    "detected_at": a["detected_at"]})
    return out


NUMERIC = {"events", "sessions", "orders", "spend_minor", "failed_payments", "tickets", "open_tickets", "capped",
           "refund_tickets"}
TIMES = {"first_seen", "last_seen", "risk_at", "changed_at"}   # µs in the hash (lua/includes/profile.lua), ISO here
INTERNAL = {"recent_tx", "last_order", "ato", "changes"}       # the rules' memory, not attributes of the customer


def _time_text(value: str) -> str:
    """A profile time as ISO-8601 with µs (earlier versions stored that text already)."""
    return format_us_exact(int(value)) if value.lstrip("-").isdigit() else value


def profile_fields(fields: dict[str, str]) -> dict[str, str]:
    """Profile fields with their times as ISO-8601 (the script keeps µs), everything else as stored."""
    out = {}
    for name, value in fields.items():
        if name in TIMES or name.startswith(("device:", "country:", "agent:", "net:")):
            value = _time_text(value)
        elif name in ("last_alert", "loc"):
            rule, _, at = value.partition(" ")
            value = f"{rule} {_time_text(at)}"
        out[name] = value
    return out


def profile_record(user_id: str, fields: dict[bytes, bytes]) -> dict:
    """A profile hash as a JSON object: times as ISO-8601, counters and the risk score as numbers,
    fingerprints dropped."""
    out: dict[str, Any] = {"user_id": user_id}
    for name, value in sorted(profile_fields({_s(k): _s(v) for k, v in fields.items()}).items()):
        if name in INTERNAL:
            continue
        if name in NUMERIC or name.startswith("category:"):
            out[name] = int(value)
        elif name == "risk_score":
            out[name] = float(value)
        else:
            out[name] = value
    return out


async def read_profile(client: Any, settings: Settings, user_id: str, scripts: Scripts | None = None) -> dict | None:
    """The user's profile with their open sessions folded in (lua/read_profile.lua); None if unknown."""
    part = Keys(settings.namespace, settings.partitions).partition(partition_of(user_id, settings.partitions))
    reply = await (scripts or Scripts(client)).run("read_profile", part, ProfileArgs(user_id=user_id))
    return profile_record(user_id, dict(zip(reply[::2], reply[1::2]))) if reply else None


PROFILE_PIPELINE = 1000     # read_profile calls per round trip (single node)
SCAN_COUNT = 10_000


async def _users_by_partition(client: Any, settings: Settings) -> dict[int, set[str]]:
    """Users with a profile or an open session, by the partition holding the key: one SCAN pass per
    key kind over the whole namespace (not one per partition: each pass walks every key)."""
    keys = Keys(settings.namespace, settings.partitions)
    head = glob_escape(settings.namespace) + ":{*}:"
    found: dict[int, set[str]] = {}
    start = len(settings.namespace) + 2            # after "<ns>:{"
    for suffix in (PROFILE, USER):
        async for key in client.scan_iter(match=head + glob_escape(suffix) + "*", count=SCAN_COUNT):
            close = key.find(b"}", start)
            if close < 0 or not key[start:close].isdigit():
                continue
            p = int(key[start:close])
            if p >= settings.partitions:
                continue
            prefix = keys.partition(p).key(suffix).encode()
            if key.startswith(prefix):           # not another key whose name happens to match the glob
                found.setdefault(p, set()).add(key[len(prefix):].decode("utf-8", "replace"))
    return found


async def collect_profiles(client: Any, settings: Settings) -> list[dict]:
    """Every user with a profile or an open session."""
    scripts, out = Scripts(client), []
    found = await _users_by_partition(client, settings)
    ordered = [user for p in sorted(found) for user in sorted(found[p])]
    if is_cluster_client(client):
        for i in range(0, len(ordered), PROFILE_READS):     # a few script calls in flight, not one at a time
            records = await asyncio.gather(*(read_profile(client, settings, user, scripts)
                                             for user in ordered[i:i + PROFILE_READS]))
            out.extend(record for record in records if record)
        return sorted(out, key=lambda r: r["user_id"])
    keys = Keys(settings.namespace, settings.partitions)
    for i in range(0, len(ordered), PROFILE_PIPELINE):      # single node: many calls per round trip
        chunk = ordered[i:i + PROFILE_PIPELINE]
        pipe = client.pipeline(transaction=False)
        for user in chunk:
            await scripts.queue(pipe, "read_profile", keys.partition(partition_of(user, settings.partitions)),
                                ProfileArgs(user_id=user))
        for user, reply in zip(chunk, await pipe.execute()):
            if reply:
                out.append(profile_record(user, dict(zip(reply[::2], reply[1::2]))))
    return sorted(out, key=lambda r: r["user_id"])


@dataclass
class Outputs:
    sessions: list[dict] = field(default_factory=list)
    minutes: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    late: list[dict] = field(default_factory=list)
    dlq: list[dict] = field(default_factory=list)
    profiles: list[dict] = field(default_factory=list)


async def collect(client: Any, settings: Settings) -> Outputs:
    # the profiles (script calls: Redis time) are read while the streams are decoded (Python time)
    profiles = asyncio.ensure_future(collect_profiles(client, settings))
    try:
        out = await _collect_streams(client, settings)
        out.profiles = await profiles
    finally:
        if not profiles.done():
            profiles.cancel()
    return out


async def _collect_streams(client: Any, settings: Settings) -> Outputs:
    keys = Keys(settings.namespace, settings.partitions)
    out = Outputs()
    minutes: dict[int, list[int]] = {}
    for part in keys.all_partitions():
        out.sessions += [session_record(f) for _, f in await read_stream(client, part.key(SESSIONS))]
        out.alerts += [alert_record(f) for _, f in await read_stream(client, part.key(ALERTS))]
        for _, f in await read_stream(client, part.key(MINUTES)):
            acc = minutes.setdefault(int(f[b"minute"]), [0, 0])
            acc[0] += int(f[b"events"])
            acc[1] += int(f[b"unique_users"])
        for _, f in await read_stream(client, part.key(LATE)):
            out.late.append({"user_id": _s(f[b"user_id"]), "timestamp": format_us(int(f[b"ts"])),
                             "watermark": format_us(int(f[b"watermark"])), "reason": _s(f[b"reason"]),
                             "record": _s(f[b"payload"])})
    out.minutes = [{"minute": format_us(m), "events": e, "unique_users": u} for m, (e, u) in sorted(minutes.items())]
    dead = set()
    for entry_id, f in await read_stream(client, keys.dlq):
        if (f[b"stream"], f[b"entry_id"]) in dead:    # at-least-once into the DLQ: listed once here
            continue
        dead.add((f[b"stream"], f[b"entry_id"]))
        out.dlq.append({"reason": _s(f[b"reason"]), "record": _s(f[b"payload"]), "stream": _s(f[b"stream"]),
                        "entry_id": _s(f[b"entry_id"])})
    out.sessions.sort(key=lambda r: (r["user_id"], r["start"]))
    out.alerts.sort(key=lambda r: (r["window_start"], r["user_id"], r["rule"], r["subject"]))
    out.late.sort(key=lambda r: (r["timestamp"], r["user_id"]))
    return out


def write(outputs: Outputs, out_dir: str | Path) -> dict[str, int]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    written = {}
    for name in ("sessions", "minutes", "alerts", "late", "dlq", "profiles"):
        rows = getattr(outputs, name)
        with (out_dir / f"{name}.jsonl").open("wb") as fh:
            for row in rows:
                fh.write(encoder.encode(row) + b"\n")
        written[name] = len(rows)
    decisions = decision_records(outputs.alerts)
    with (out_dir / "decisions.jsonl").open("wb") as fh:
        for row in decisions:
            fh.write(encoder.encode(row) + b"\n")
    written["decisions"] = len(decisions)
    return written

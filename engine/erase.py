"""GDPR erasure of one user: state, profile, rule state, retained input entries, emitted outputs.

Order matters: the tombstone goes first, so events of the user that arrive while (or after)
we erase are dropped by the apply script instead of re-creating state.  The tombstone
(``<ns>:{p}:tomb:<user_id>``) keeps the id only for ``tombstone_ttl_ms`` — as long as late
events of the user can still arrive; the audit record keeps only a SHA-256 of the id.
Aggregates (per-minute counts, HyperLogLogs) are anonymous and stay.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec

from .export import read_stream
from .keys import (ALERTS, CARD_USERS, CLICKS, FAILS, FIRED, IP_USERS, LATE, OPEN, SESSIONS, STATE, SUPPORT, TICKETS,
                   TOMB, TX, UCARDS, Keys, Partition, glob_escape)
from .partitioning import partition_of
from .settings import Settings

PAGE = 5000
_user_of = msgspec.json.Decoder(dict)


def subject_hash(user_id: str) -> str:
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def _payload_user(raw: bytes) -> str | None:
    try:
        doc = _user_of.decode(raw)
    except msgspec.DecodeError:
        return None
    user = doc.get("user_id") if isinstance(doc, dict) else None
    return user if isinstance(user, str) else (str(user) if isinstance(user, int) else None)


async def _delete_entries(client: Any, stream: str, match) -> int:
    """XDEL every entry of ``stream`` for which match(fields) is true; returns how many."""
    removed, start = 0, "-"
    while True:
        page = await client.xrange(stream, min=start, max="+", count=PAGE)
        doomed = [entry_id for entry_id, fields in page if match(fields)]
        if doomed:
            removed += await client.xdel(stream, *doomed)
        if len(page) < PAGE:
            return removed
        start = "(" + page[-1][0].decode()


async def _extend_tombstone_horizon(client: Any, part: Partition, until_us: int) -> None:
    current = await client.hget(part.key(STATE), "tombs_until")
    if current is None or int(current) < until_us:
        await client.hset(part.key(STATE), "tombs_until", until_us)


async def _forget_clock_user(client: Any, part: Partition, user_id: str) -> None:
    """The partition's clock names the few users with the latest click times (state field ``top``,
    lua/includes/partition_state.lua): the user leaves it.  (The tombstone keeps their later clicks out.)"""
    raw = await client.hget(part.key(STATE), "top")
    if raw:
        top = msgspec.json.decode(raw)
        kept = [entry for entry in top if entry[0] != user_id]
        if len(kept) != len(top):
            await client.hset(part.key(STATE), "top", msgspec.json.encode(kept))


async def _redact_alerts(client: Any, stream: str, user_id: str) -> tuple[int, int]:
    """Alerts about the user are deleted; alerts about another subject (an IP, a card) that list
    the user in their evidence are re-written without the user.  Returns (deleted, redacted)."""
    uid, quoted = user_id.encode("utf-8"), msgspec.json.encode(user_id)
    deleted = redacted = 0
    for entry_id, fields in await read_stream(client, stream):
        if fields.get(b"user_id") == uid and fields.get(b"subject_kind", b"user") == b"user":
            deleted += await client.xdel(stream, entry_id)
        elif fields.get(b"user_id") == uid or quoted in fields.get(b"evidence", b""):
            evidence = _evidence.decode(fields.get(b"evidence", b"{}"))
            if isinstance(evidence, dict):
                evidence = {k: [u for u in v if u != user_id] if isinstance(v, list) else v for k, v in evidence.items()}
            copy = {**fields, b"evidence": msgspec.json.encode(evidence)}
            if copy.get(b"user_id") == uid:
                copy[b"user_id"] = b"[erased]"
            await client.xadd(stream, copy)
            await client.xdel(stream, entry_id)
            redacted += 1
    return deleted, redacted


_evidence = msgspec.json.Decoder(dict | list)


async def erase(client: Any, settings: Settings, user_id: str) -> dict[str, int]:
    keys = Keys(settings.namespace, settings.partitions)
    part = keys.partition(partition_of(user_id, settings.partitions))
    uid = user_id.encode("utf-8")
    until_us = (int(time.time() * 1000) + settings.tombstone_ttl_ms) * 1000
    await client.set(part.key(TOMB) + user_id, 1, px=settings.tombstone_ttl_ms)
    # the apply script looks tombstones up only while a partition has one that may be alive
    await _extend_tombstone_horizon(client, part, until_us)

    report = {"state_keys": 0, "alert_markers": 0, "input_entries": 0, "sessions": 0, "alerts": 0,
              "alerts_redacted": 0, "subject_sets": 0, "late_entries": 0, "dead_letters": 0}
    report["state_keys"] = await client.delete(part.user(user_id), part.profile(user_id),
                                               part.key(TICKETS) + user_id, part.key(FAILS) + user_id)
    await client.zrem(part.key(OPEN), user_id)
    await _forget_clock_user(client, part, user_id)
    escaped = glob_escape(user_id)
    for pattern, counter in ((f"{part.prefix}{FIRED}*:{escaped}", "alert_markers"),
                             (f"{part.prefix}{UCARDS}*:{escaped}", "state_keys")):
        found = [k async for k in client.scan_iter(match=pattern, count=1000)]
        if found:
            report[counter] += await client.delete(*found)
    # the user as a member of other subjects' sets (card users, IP samples), in every partition
    for suffix in (CARD_USERS, IP_USERS):
        async for key in client.scan_iter(match=f"{glob_escape(settings.namespace)}:*:{suffix}*", count=1000):
            report["subject_sets"] += await client.srem(key, user_id)

    by_field = lambda f: f.get(b"user_id") == uid  # noqa: E731
    of_user = lambda f: f.get(b"e") is not None and _payload_user(f[b"e"]) == user_id  # noqa: E731
    for source in (CLICKS, TX, SUPPORT):
        report["input_entries"] += await _delete_entries(client, part.key(source), of_user)
    report["sessions"] = await _delete_entries(client, part.key(SESSIONS), by_field)
    for other in keys.all_partitions():
        deleted, redacted = await _redact_alerts(client, other.key(ALERTS), user_id)
        report["alerts"] += deleted
        report["alerts_redacted"] += redacted
    report["late_entries"] = await _delete_entries(client, part.key(LATE), by_field)
    quoted = msgspec.json.encode(user_id)

    def dead_letter_of_user(fields) -> bool:
        payload = fields.get(b"payload", b"")
        owner = _payload_user(payload)
        return owner == user_id if owner is not None else quoted in payload   # unparseable: by the quoted id

    report["dead_letters"] = await _delete_entries(client, keys.dlq, dead_letter_of_user)

    await client.xadd(keys.audit, {"action": "erase", "subject_sha256": subject_hash(user_id),
                                   "partition": part.p, "at_ms": int(time.time() * 1000),
                                   **{k: v for k, v in report.items()}})
    return report

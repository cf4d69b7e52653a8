"""GDPR erasure of one user: state, profile, rule state, retained input entries, emitted outputs.

Order matters: the tombstone goes first, so events of the user that arrive while (or after)
we erase are dropped by the apply script instead of re-creating state.  The tombstone
(``<ns>:{p}:tomb:<user_id>``) keeps the id only for ``tombstone_ttl_ms`` — as long as late
events of the user can still arrive.  Aggregates (per-minute counts, HyperLogLogs) are anonymous
and stay.

Which keys are the user's is read from indexes the apply script keeps (lua/includes/rules.lua),
never from a SCAN of the keyspace, so erasing one user costs the same with 10 thousand keys or 10
million, and touches exactly that user's keys whatever the ids contain (``b`` and ``a:b``):

* keys named by the id alone (``user:``, ``profile:``, ``tickets:``, ``fails:``, ``ucz:``, ``spend:``) are
  deleted by name;
* ``ukeys:<id>`` (user's partition) lists the others (alert and risk markers, card windows): deleted;
* ``usets:<id>`` in every partition lists the subjects' sets (users of a card, of an IP) the user
  joined there: the user is removed from them (16 paged SSCANs).

The audit record keeps an HMAC-SHA256 of the id, not the id nor a plain hash (a guessable id
would be found by hashing guesses): its key is the ``audit_key`` setting or, when unset, 32
random bytes created once at ``<ns>:audit:key``.  Whoever can read that key (or the setting) can
still test guesses of an id against the audit, so keep it from readers of the audit stream.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any, AsyncIterator

import msgspec

from .keys import (ALERTS, CLICKS, FAILS, FIRED, LATE, OPEN, PROFILES, RISK, SESSIONS, SPEND, STATE, SUPPORT, TICKETS,
                   TOMB, TX, UCARDS, USER_KEYS, USER_SETS, Keys, Partition)
from .partitioning import partition_of
from .export import decode_evidence
from .settings import Settings
from .streams import pages

PAGE = 5000
MEMBER = b'{"role":"member"}'      # the evidence of a record linking a user to a subject alert (rules.lua)
_user_of = msgspec.json.Decoder(dict)


async def audit_key(client: Any, settings: Settings) -> bytes:
    """The HMAC key of the audit records: the setting, or the namespace's random key (made once)."""
    if settings.audit_key:
        return settings.audit_key.encode("utf-8")
    name = Keys(settings.namespace, settings.partitions).audit_key
    await client.set(name, os.urandom(32), nx=True)
    return await client.get(name)


def audit_key_sync(client: Any, settings: Settings) -> bytes:
    """audit_key with a sync client (the archiver, engine/lake)."""
    if settings.audit_key:
        return settings.audit_key.encode("utf-8")
    name = Keys(settings.namespace, settings.partitions).audit_key
    client.set(name, os.urandom(32), nx=True)
    return client.get(name)


def subject_hmac(key: bytes, user_id: str) -> str:
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _payload_user(raw: bytes) -> str | None:
    """The user id of an input payload; ids are strings (a number is not anybody's id)."""
    try:
        doc = _user_of.decode(raw)
    except msgspec.DecodeError:
        return None
    user = doc.get("user_id") if isinstance(doc, dict) else None
    return user if isinstance(user, str) else None


async def _delete_entries(client: Any, stream: str, match) -> int:
    """XDEL every entry of ``stream`` for which match(fields) is true; returns how many."""
    removed = 0
    async for page in pages(client, stream, upto_now=True):
        doomed = [entry_id for entry_id, fields in page if match(fields)]
        if doomed:
            removed += await client.xdel(stream, *doomed)
    return removed


async def _members(client: Any, key: str) -> AsyncIterator[list[bytes]]:
    """A set's members, a page at a time (SSCAN)."""
    cursor = 0
    while True:
        cursor, page = await client.sscan(key, cursor, count=PAGE)
        if page:
            yield page
        if int(cursor) == 0:
            return


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
    """Alerts about the user, and the records linking the user to an alert on another subject (an
    IP, a card), are deleted; alerts about another subject that name the user (written by earlier
    versions) are re-written without the user.  Returns (deleted, redacted)."""
    uid, quoted = user_id.encode("utf-8"), msgspec.json.encode(user_id)
    deleted = redacted = 0
    async for page in pages(client, stream, upto_now=True):
        for entry_id, fields in page:
            if fields.get(b"user_id") == uid and (fields.get(b"subject_kind", b"user") == b"user"
                                                  or fields.get(b"evidence") == MEMBER):
                deleted += await client.xdel(stream, entry_id)
            elif fields.get(b"user_id") == uid or quoted in fields.get(b"evidence", b""):
                evidence = decode_evidence(fields.get(b"evidence", b"{}"))
                if isinstance(evidence, dict):
                    evidence = {k: [u for u in v if u != user_id] if isinstance(v, list) else v
                                for k, v in evidence.items()}
                copy = {**fields, b"evidence": msgspec.json.encode(evidence)}
                if copy.get(b"user_id") == uid:
                    copy[b"user_id"] = b"[erased]"
                await client.xadd(stream, copy)
                await client.xdel(stream, entry_id)
                redacted += 1
    return deleted, redacted




async def _erase_indexed(client: Any, keys: Keys, part: Partition, user_id: str, report: dict) -> None:
    """The user's keys listed in ukeys:<id>, and the user's membership of the sets in usets:<id>
    of every partition; then the indexes themselves."""
    owned = part.key(USER_KEYS) + user_id
    markers = (part.key(FIRED).encode(), part.key(RISK).encode())
    async for page in _members(client, owned):
        report["alert_markers"] += sum(1 for k in page if k.startswith(markers))
        report["state_keys"] += sum(1 for k in page if not k.startswith(markers))
        await client.delete(*page)
    await client.delete(owned)
    for other in keys.all_partitions():
        index = other.key(USER_SETS) + user_id
        async for page in _members(client, index):
            async with client.pipeline(transaction=False) as pipe:
                for key in page:
                    pipe.zrem(key, user_id)
                report["subject_sets"] += sum(await pipe.execute())
        await client.delete(index)


async def erase(client: Any, settings: Settings, user_id: str, request_id: str = "") -> dict[str, int]:
    """Erase the user from Redis; the audit record carries ``request_id`` (the lake's erasure, engine/lake,
    records the same id) and a keyed HMAC of the user id, never the id."""
    keys = Keys(settings.namespace, settings.partitions)
    part = keys.partition(partition_of(user_id, settings.partitions))
    uid = user_id.encode("utf-8")
    until_us = (int(time.time() * 1000) + settings.tombstone_ttl_ms) * 1000
    await client.set(part.key(TOMB) + user_id, 1, px=settings.tombstone_ttl_ms)
    # the apply script looks tombstones up only while a partition has one that may be alive
    await _extend_tombstone_horizon(client, part, until_us)

    report = {"state_keys": 0, "alert_markers": 0, "input_entries": 0, "sessions": 0, "alerts": 0,
              "alerts_redacted": 0, "subject_sets": 0, "late_entries": 0, "dead_letters": 0,
              "profile_changes": 0}
    report["state_keys"] = await client.delete(part.user(user_id), part.profile(user_id),
                                               part.key(TICKETS) + user_id, part.key(FAILS) + user_id,
                                               part.key(UCARDS) + user_id, part.key(SPEND) + user_id)
    await client.zrem(part.key(OPEN), user_id)
    await _forget_clock_user(client, part, user_id)
    await _erase_indexed(client, keys, part, user_id, report)

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
    report["profile_changes"] = await _delete_entries(client, part.key(PROFILES), by_field)   # the changelog
    quoted = msgspec.json.encode(user_id)

    def dead_letter_of_user(fields) -> bool:
        payload = fields.get(b"payload", b"")
        owner = _payload_user(payload)
        return owner == user_id if owner is not None else quoted in payload   # unparseable: by the quoted id

    report["dead_letters"] = await _delete_entries(client, keys.dlq, dead_letter_of_user)

    await client.xadd(keys.audit, {"action": "erase", "request_id": request_id,
                                   "subject_hmac": subject_hmac(await audit_key(client, settings), user_id),
                                   "partition": part.p, "at_ms": int(time.time() * 1000), **report})
    return report

"""The one contract between Python and the Lua scripts (BullMQ's model: one definition, generated glue).

For each script: the names of its KEYS (the key builders of engine/keys.py Partition), its ARGV
and its reply, as msgspec Structs sent and received positionally (``array_like``).  engine/scripts.py
generates each script's Lua prelude from these definitions — ``K.<name>`` for its keys,
``A.<name>`` for its arguments (numbers converted, the count checked), ``KEY.<name>`` for the key
suffixes of engine/keys.py, and ``pack_<Struct>(t)`` to build a reply from a table with named
fields — so no name, position or suffix is typed on both sides.
"""

from __future__ import annotations

import msgspec


class _Positional(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    pass


# -- apply_batch ---------------------------------------------------------------------------------
APPLY_KEYS = ("prefix", "clicks", "state", "open", "mopen", "sessions", "alerts", "late", "minutes", "lease",
              "tx", "support", "rekey", "outbox", "profiles")


class ApplyArgs(_Positional):
    consumer: str
    group: str
    now_us: int
    gap_us: int
    ooo_us: int
    ttl_ms: int
    maxlen: int
    channel: str
    profile_ttl_ms: int
    rules: bytes              # engine/rules.py Rules.to_lua (JSON)
    events: bytes             # engine/batch.py (JSON array in stream order)
    quorum: int               # users whose click times make the partition's clock
    limit: int                # users / minutes closed per call at most


class AlertRef(_Positional):
    entry_id: bytes           # the triggering input entry ('' when a session closing raised it)
    rule: bytes
    subject: bytes
    window_start_us: int


class Poison(_Positional):
    entry_id: bytes
    reason: bytes
    source: bytes             # engine/batch.py SOURCE_CODE value


class OutboxEntry(_Positional):
    entry_id: bytes
    records: bytes            # JSON array of records for other partitions (lua/includes/rules.lua)


class ApplyReply(_Positional):
    applied: int
    duplicates: int
    late: int
    sessions_closed: int
    minutes_finalized: int
    watermark_us: int
    erased: int
    alerts: list[AlertRef]
    poison: list[Poison]
    outbox: list[OutboxEntry]  # none or one
    more: int                 # 1: more users or minutes were due than one call closes
    ahead: int                # clicks far ahead of the partition's clock
    capped: int               # values a per-user cap left out


# -- advance_watermark ---------------------------------------------------------------------------
ADVANCE_KEYS = ("prefix", "state", "open", "mopen", "sessions", "alerts", "minutes", "lease", "outbox",
                "profiles")


class AdvanceArgs(_Positional):
    consumer: str             # '' = no ownership check (flush)
    target_us: int
    gap_us: int
    ttl_ms: int
    maxlen: int
    limit: int
    now_us: int
    channel: str
    profile_ttl_ms: int
    rules: bytes


class AdvanceReply(_Positional):
    sessions_closed: int
    minutes_finalized: int
    more: int
    watermark_us: int
    alerts: list[AlertRef]


# -- the small scripts ------------------------------------------------------------------------------
class LeaseArgs(_Positional):
    consumer: str
    ttl_ms: int


class ReleaseArgs(_Positional):
    consumer: str


class ProfileArgs(_Positional):
    user_id: str


# script name -> (KEYS names, ARGV Struct, reply Struct or None for a plain value)
SCRIPTS: dict[str, tuple[tuple[str, ...], type, type | None]] = {
    "apply_batch": (APPLY_KEYS, ApplyArgs, ApplyReply),
    "advance_watermark": (ADVANCE_KEYS, AdvanceArgs, AdvanceReply),
    "claim_lease": (("lease",), LeaseArgs, None),
    "release_lease": (("lease",), ReleaseArgs, None),
    "read_profile": (("prefix",), ProfileArgs, None),
}
# Structs that a script builds in Lua (pack_<Name>): every reply Struct and what it nests.
PACKED = (ApplyReply, AdvanceReply, AlertRef, Poison, OutboxEntry)


def argv(args: _Positional) -> list:
    """ARGV of a script call, in contract order."""
    return list(msgspec.structs.astuple(args))


def reply_of(kind: type, raw) -> _Positional:
    """A script's raw reply as its named Struct."""
    return msgspec.convert(raw, kind)

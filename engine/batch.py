"""Turn one partition's stream entries into the apply script's argument (pure: no I/O).

A partition has four input streams (engine/keys.py INPUTS): clicks, transactions, support
tickets and records forwarded from other partitions.  Their entries are merged in append order
(entry-id milliseconds: the streams of a partition live on one node; see merge_sources), validated,
and encoded as one JSON array of events in that order, each led by its entry id and source:

    ["<id>", "c", user_id, ts_us, event_type, key, category, device, country, ip, "#" + agent, flags]
    ["<id>", "t", user_id, ts_us, fingerprint, completed 1|0, amount_minor, currency, card, ip, country, method]
    ["<id>", "k", user_id, ts_us, ticket_id, open 1|0, category]
    ["<id>", "r", [forwarded record, ...]]          (written by lua/includes/rules.lua, trusted)

Bad entries become dead-letter records carrying the original payload and a readable reason.
"""

from __future__ import annotations

from hashlib import blake2b
from bisect import bisect_right
from heapq import merge
from typing import Callable, Mapping, NamedTuple, Sequence

import msgspec

from .contract import ApplyArgs
from .keys import CLICKS, REKEY, SUPPORT, TX, Keys
from .partitioning import partition_of
from .schema import BadRecord, parse_click, parse_ticket, parse_transaction
from .settings import Settings

PAYLOAD_FIELD = b"e"
SOURCE_CODE = {CLICKS: "c", TX: "t", SUPPORT: "k", REKEY: "r"}
_encode = msgspec.json.Encoder().encode
FINGERPRINT_MASK = (1 << 46) - 1


class DeadLetter(NamedTuple):
    entry_id: bytes
    payload: bytes
    reason: str
    source: str = CLICKS       # which input stream of the partition (engine/keys.py INPUTS)


class Decoded(NamedTuple):
    events: bytes              # JSON array of events (see the module docstring)
    count: int
    dead: list[DeadLetter]


Entry = tuple[bytes, "dict | list | None"]
HOMES_KEPT = 500_000                       # user -> partition, remembered (per partition count)
_homes: dict[int, dict[str, int]] = {}


def fingerprint(event_id: str) -> int:  # (a click's is sent as click_key(fingerprint))
    """46 bits of BLAKE2b of the producer's event_id: exact as a JSON number in Lua (cjson keeps
    14 digits), stable across processes, collisions among a user's 16 remembered ids ~1e-12."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=6).digest(), "big") & FINGERPRINT_MASK


_KEY_PAIRS = [chr(48 + (i >> 6)) + chr(48 + (i & 63)) for i in range(4096)]     # 12 bits -> 2 characters


def click_key(fp: int) -> str:
    """A click's fingerprint as the apply script keeps it: 8 characters of 6 bits each, '0' (48) + bits,
    most significant first (lua/includes/user_state.lua fp_key makes the same from a number)."""
    return _KEY_PAIRS[fp >> 36 & 4095] + _KEY_PAIRS[fp >> 24 & 4095] + _KEY_PAIRS[fp >> 12 & 4095] + _KEY_PAIRS[fp & 4095]


def payload_of(fields: dict | list) -> bytes | None:
    """The event JSON of an entry's fields, parsed ({field: value}) or raw ([field, value, ...])."""
    if isinstance(fields, dict):
        return fields.get(PAYLOAD_FIELD)
    if len(fields) == 2 and fields[0] == PAYLOAD_FIELD:
        return fields[1]
    return dict(zip(fields[::2], fields[1::2])).get(PAYLOAD_FIELD)


_RANK = {source: rank for rank, source in enumerate((CLICKS, TX, SUPPORT, REKEY))}


def _id_key(item: tuple[str, Entry]) -> tuple[int, int, int]:
    ms, _, seq = item[1][0].partition(b"-")
    return int(ms), _RANK[item[0]], int(seq or 0)


def merge_sources(by_source: Mapping[str, Sequence[Entry]]) -> list[tuple[str, Entry]]:
    """One partition's entries of several input streams, in the order Redis appended them: by the
    millisecond of their ids (one node's clock); within one millisecond the order between streams
    is unknowable, so clicks come first, then transactions, tickets and forwarded records."""
    lists = [[(source, e) for e in entries] for source, entries in by_source.items() if entries]
    if len(lists) == 1:
        return lists[0]
    lists.sort(key=len)
    if len(lists) == 2 and len(lists[0]) * 8 < len(lists[1]):
        return _merge_few(lists[1], lists[0])
    return list(merge(*lists, key=_id_key))


def _merge_few(many: list, few: list) -> list:
    """heapq.merge's order (stable: of equal keys, the earlier list's first; _RANK makes keys of
    different streams differ anyway) when one list is short: each of its items goes in by
    binary search, so only log(n) keys of the long list are computed, not n."""
    out: list = []
    start = 0
    for item in few:
        key = _id_key(item)
        cut = bisect_right(many, key, lo=start, key=_id_key)
        out += many[start:cut]
        out.append(item)
        start = cut
    out += many[start:]
    return out


def decode_entries(entries: Sequence[tuple[str, Entry]], partition: int, now_us: int, settings: Settings,
                   category_of: Callable[[str], str | None] = lambda _: None) -> Decoded:
    """Entries (source, (entry_id, fields)) of one partition.  A user of another partition is bad
    input too (its state lives elsewhere, so applying it here would split the user)."""
    parts = settings.partitions
    max_future = settings.max_future_ms * 1000
    max_id = settings.max_id_bytes
    homes = _homes.setdefault(parts, {})
    if len(homes) > HOMES_KEPT:
        homes.clear()
    good: list = []
    dead: list[DeadLetter] = []
    for source, (entry_id, fields) in entries:
        if not fields:
            dead.append(DeadLetter(entry_id, b"", "entry was trimmed from the stream before it was processed"
                                                  " (retention trims only acknowledged entries: was the stream trimmed by hand?)", source))
            continue
        # the usual raw entry [b"e", payload] without a call
        raw = fields[1] if fields.__class__ is list and len(fields) == 2 and fields[0] == PAYLOAD_FIELD \
            else payload_of(fields)
        if raw is None:
            dead.append(DeadLetter(entry_id, repr(fields).encode()[:4096],
                                   "entry has no 'e' field (expected the event JSON in field 'e')", source))
            continue
        if source == REKEY:
            good.append((entry_id.decode(), "r", msgspec.Raw(raw)))
            continue
        try:
            if source == CLICKS:
                c = parse_click(raw, now_us, max_future, max_id)
                user = c.user_id
                category = (category_of(c.product_id) if c.product_id else None) or c.category
                event_id = c.event_id          # fingerprint(), inline: once per event
                event = (entry_id.decode(), "c", user, c.ts_us, c.event_type,
                         click_key(int.from_bytes(blake2b(event_id.encode(), digest_size=6).digest(), "big")
                                   & FINGERPRINT_MASK) if event_id else "", category, c.device, c.country, c.ip,
                         "#" + c.agent if c.agent else "", c.flags)
            elif source == TX:
                t = parse_transaction(raw, now_us, max_future, max_id)
                user = t.user_id
                event = (entry_id.decode(), "t", user, t.ts_us, fingerprint(t.transaction_id), int(t.completed),
                         t.amount_minor, t.currency, t.card, t.ip, t.country, t.method)
            else:
                k = parse_ticket(raw, now_us, max_future, max_id)
                user = k.user_id
                event = (entry_id.decode(), "k", user, k.ts_us, k.ticket_id, int(k.open), k.category)
        except BadRecord as exc:
            dead.append(DeadLetter(entry_id, raw, str(exc), source))
            continue
        except Exception as exc:  # a validator bug must not stop the partition: the record is kept
            dead.append(DeadLetter(entry_id, raw, f"unexpected validation error {type(exc).__name__}: {exc}", source))
            continue
        home = homes.get(user)
        if home is None:
            home = homes[user] = partition_of(user, parts)
        if home != partition:
            dead.append(DeadLetter(entry_id, raw, f"user_id belongs to partition {home}, not {partition}:"
                                                  " the producer used another partition function or count", source))
            continue
        good.append(event)
    return Decoded(_encode(good), len(good), dead)



def apply_args(settings: Settings, consumer: str, now_us: int, rules: bytes, events: bytes) -> ApplyArgs:
    """ARGV of lua/apply_batch.lua."""
    s = settings
    return ApplyArgs(consumer=consumer, group=s.group, now_us=now_us, gap_us=s.session_gap_ms * 1000,
                     ooo_us=s.out_of_order_ms * 1000, ttl_ms=s.state_ttl_ms, maxlen=s.output_maxlen,
                     channel=Keys(s.namespace, s.partitions).channel(s.alerts_channel),
                     profile_ttl_ms=s.profile_ttl_ms, rules=rules, events=events, quorum=s.watermark_quorum,
                     limit=s.close_per_call)

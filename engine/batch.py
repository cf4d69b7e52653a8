"""Turn one partition's stream entries into the apply script's arguments (pure: no I/O).

Good entries become ``(entry_id, user_id, ts_us, event_type)`` quadruples in stream order;
bad ones become dead-letter records carrying the original payload and a readable reason.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import NamedTuple, Sequence

import msgspec

from .partitioning import partition_of
from .schema import BadRecord, parse_click
from .settings import Settings

PAYLOAD_FIELD = b"e"
_encode = msgspec.json.Encoder().encode
FINGERPRINT_MASK = (1 << 46) - 1


class DeadLetter(NamedTuple):
    entry_id: bytes
    payload: bytes
    reason: str


class Decoded(NamedTuple):
    events: bytes              # JSON array of [entry_id, user_id, ts_us, event_type, fingerprint]
    count: int
    dead: list[DeadLetter]


def fingerprint(event_id: str) -> int:
    """46 bits of BLAKE2b of the producer's event_id: exact as a JSON number in Lua (cjson keeps
    14 digits), stable across processes, collisions among a user's 16 remembered ids ~1e-12."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=6).digest(), "big") & FINGERPRINT_MASK


def payload_of(fields: dict | list) -> bytes | None:
    """The event JSON of an entry's fields, parsed ({field: value}) or raw ([field, value, ...])."""
    if isinstance(fields, dict):
        return fields.get(PAYLOAD_FIELD)
    if len(fields) == 2 and fields[0] == PAYLOAD_FIELD:
        return fields[1]
    return dict(zip(fields[::2], fields[1::2])).get(PAYLOAD_FIELD)


def decode_entries(entries: Sequence[tuple[bytes, dict | list | None]], partition: int, now_us: int,
                   settings: Settings) -> Decoded:
    """Entries of one partition's stream; a user of another partition is bad input too (its state
    lives elsewhere, so applying it here would split the user)."""
    parts = settings.partitions
    max_future = settings.max_future_ms * 1000
    max_id = settings.max_id_bytes
    good: list[tuple[str, str, int, str]] = []
    dead: list[DeadLetter] = []
    for entry_id, fields in entries:
        if not fields:
            dead.append(DeadLetter(entry_id, b"", "entry was trimmed from the stream before it was processed"
                                                  " (raise input_maxlen)"))
            continue
        raw = payload_of(fields)
        if raw is None:
            dead.append(DeadLetter(entry_id, repr(fields).encode()[:4096],
                                   "entry has no 'e' field (expected the event JSON in field 'e')"))
            continue
        try:
            click = parse_click(raw, now_us, max_future, max_id)
        except BadRecord as exc:
            dead.append(DeadLetter(entry_id, raw, str(exc)))
            continue
        except Exception as exc:  # a validator bug must not stop the partition: the record is kept
            dead.append(DeadLetter(entry_id, raw, f"unexpected validation error {type(exc).__name__}: {exc}"))
            continue
        home = partition_of(click.user_id, parts)
        if home != partition:
            dead.append(DeadLetter(entry_id, raw, f"user_id belongs to partition {home}, not {partition}:"
                                                  " the producer used another partition function or count"))
            continue
        good.append((entry_id.decode(), click.user_id, click.ts_us, click.event_type,
                     fingerprint(click.event_id) if click.event_id else 0))
    return Decoded(_encode(good), len(good), dead)

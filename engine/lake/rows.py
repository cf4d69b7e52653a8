"""Stream entries -> table rows (dicts of column -> Python value).

Lenient on purpose: the lake keeps what arrived, bad input included (its raw payload is always
there); a field that does not parse becomes null instead of stopping the archiver.  Times are
integers of µs since the epoch (UTC); ``dt`` is the event date as days since the epoch.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec

from ..eventtime import parse_timestamp
from ..export import profile_fields
from ..schema import BadRecord, minor_units
from .positions import parse_id

US_PER_DAY = 86_400_000_000
Row = dict[str, Any]
_json = msgspec.json.Decoder()


def _s(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _int(value: bytes | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _doc(raw: bytes | None) -> dict:
    try:
        doc = _json.decode(raw or b"")
    except msgspec.DecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _text(doc: dict, name: str) -> str | None:
    value = doc.get(name)
    if value is None or value.__class__ is str:      # the usual case first
        return value
    return None if isinstance(value, (dict, list)) else str(value)


def _time(*values: object) -> int | None:
    """The first value that parses as a timestamp (µs), or None."""
    for value in values:
        if value is None or value == "":
            continue
        try:
            return parse_timestamp(value)
        except (ValueError, TypeError):
            continue
    return None


def entry_us(entry_id: str) -> int:
    return parse_id(entry_id)[0] * 1000


def _base(stream: str, partition: int | None, entry_id: str, event_us: int | None) -> Row:
    """The columns every table has: where the row came from and its event date."""
    at = entry_us(entry_id)
    return {"stream": stream, "entry_id": entry_id, "entry_time": at, "partition": partition,
            "dt": (event_us if event_us is not None else at) // US_PER_DAY}


# -- bronze: the input as it arrived, with its key fields parsed -------------------------------
def click(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    raw = f.get(b"e", b"")
    doc = _doc(raw)
    ts = _time(doc.get("timestamp"))
    return {**_base(stream, partition, entry_id, ts), "user_id": _text(doc, "user_id"),
            "event_type": _text(doc, "event_type"), "event_id": _text(doc, "event_id"), "event_ts": ts,
            "session_id": _text(doc, "session_id"), "device": _text(doc, "device"),
            "country": _text(doc, "country"), "product_id": _text(doc, "product_id"), "raw": _s(raw)}


def transaction(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    raw = f.get(b"e", b"")
    doc = _doc(raw)
    ts = _time(doc.get("timestamp"))
    amount, currency = _text(doc, "amount"), _text(doc, "currency") or "USD"
    try:
        minor = None if amount is None else minor_units(amount, currency)
    except BadRecord:
        minor = None
    return {**_base(stream, partition, entry_id, ts), "user_id": _text(doc, "user_id"),
            "transaction_id": _text(doc, "transaction_id"), "order_id": _text(doc, "order_id"),
            "status": _text(doc, "status"), "amount": amount, "amount_minor": minor,
            "currency": currency, "payment_method": _text(doc, "payment_method"),
            "country": _text(doc, "country"), "event_ts": ts, "raw": _s(raw)}


def ticket(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    raw = f.get(b"e", b"")
    doc = _doc(raw)
    ts = _time(doc.get("updated_at"), doc.get("created_at"))
    return {**_base(stream, partition, entry_id, ts), "user_id": _text(doc, "user_id"),
            "ticket_id": _text(doc, "ticket_id"), "status": _text(doc, "status"),
            "category": _text(doc, "category"), "channel": _text(doc, "channel"),
            "priority": _text(doc, "priority"), "event_ts": ts, "raw": _s(raw)}


def product(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    raw = f.get(b"e", b"")
    doc = _doc(raw)
    ts = _time(doc.get("updated_at"))
    return {**_base(stream, partition, entry_id, ts), "product_id": _text(doc, "product_id"),
            "category": _text(doc, "category"), "name": _text(doc, "name"), "price": _text(doc, "price"),
            "stock": _text(doc, "stock"), "event_ts": ts, "raw": _s(raw)}


# -- silver: the engine's outputs, typed ----------------------------------------------------------
def session(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    start = _int(f.get(b"start"))
    categories = f.get(b"categories", b"{}")
    return {**_base(stream, partition, entry_id, start), "user_id": _s(f.get(b"user_id")),
            "session_id": _s(f.get(b"session_id")), "start": start, "end": _int(f.get(b"end")),
            "event_count": _int(f.get(b"event_count")), "counts": _s(f.get(b"types")),
            "categories": "{}" if categories == b"[]" else _s(categories)}


def alert(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    window = _int(f.get(b"window_start"))
    return {**_base(stream, partition, entry_id, window), "rule": _s(f.get(b"rule")),
            "severity": _s(f.get(b"severity")), "subject_kind": _s(f.get(b"subject_kind")),
            "subject": _s(f.get(b"subject")), "user_id": _s(f.get(b"user_id")), "window_start": window,
            "count": _int(f.get(b"count")), "threshold": _int(f.get(b"threshold")),
            "evidence": _s(f.get(b"evidence")), "detected_at": _int(f.get(b"detected_at")),
            "source_entry_id": _s(f.get(b"entry_id"))}


def minute(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    at = _int(f.get(b"minute"))
    return {**_base(stream, partition, entry_id, at), "minute": at, "events": _int(f.get(b"events")),
            "unique_users": _int(f.get(b"unique_users"))}


def late(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    ts = _int(f.get(b"ts"))
    return {**_base(stream, partition, entry_id, ts), "user_id": _s(f.get(b"user_id")), "event_ts": ts,
            "watermark": _int(f.get(b"watermark")), "reason": _s(f.get(b"reason")),
            "payload": _s(f.get(b"payload")), "source_entry_id": _s(f.get(b"entry_id"))}


def dead_letter(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    at_ms = _int(f.get(b"at_ms"))
    row = _base(stream, partition, entry_id, None if at_ms is None else at_ms * 1000)
    row["partition"] = _int(f.get(b"partition"))
    return {**row, "user_id": _text(_doc(f.get(b"payload")), "user_id"), "reason": _s(f.get(b"reason")),
            "payload": _s(f.get(b"payload")), "source_stream": _s(f.get(b"stream")),
            "source_entry_id": _s(f.get(b"entry_id")), "at": None if at_ms is None else at_ms * 1000}


def profile_change(stream: str, partition: int | None, entry_id: str, f: dict[bytes, bytes]) -> Row:
    """One record of the profile changelog (lua/includes/profile.lua save_profiles): the changed
    fields and their new values as a JSON object, times as ISO-8601 like the exported profiles
    (engine/export.py profile_fields: the script keeps µs); ``ts`` the latest event time behind it."""
    ts = _int(f.get(b"ts"))
    changes = _doc(f.get(b"changes"))
    text = (msgspec.json.encode(profile_fields(changes)).decode() if isinstance(changes, dict)
            else _s(f.get(b"changes")))
    return {**_base(stream, partition, entry_id, ts), "user_id": _s(f.get(b"user_id")), "event_ts": ts,
            "changes": text}


RowFn = Callable[[str, "int | None", str, dict], Row]

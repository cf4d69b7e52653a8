"""Input schemas (msgspec) and validation of one raw record into what the engine applies.

Evolution rules (DESIGN §2): new fields are optional with defaults; unknown fields are
ignored; unknown ``event_type`` values are processed; a breaking change gets a new
``schema_version`` with its own decoder, and every version in ``_DECODERS`` is accepted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from .eventtime import BadTimestamp, parse_timestamp

MAX_TYPE_LEN = 128


class ClickEventV1(msgspec.Struct, kw_only=True, frozen=True):
    user_id: str | int
    event_type: str
    timestamp: str | int | float  # ISO-8601 (offset, Z or naive = UTC) or epoch time (see eventtime)
    schema_version: int = 1
    event_id: str | int | None = None
    session_id: str | int | None = None   # the app's own session id; sessions are recomputed
    device: str | None = None
    page_url: str | None = None
    product_id: str | int | None = None
    ip: str | None = None
    user_agent: str | None = None
    country: str | None = None
    properties: dict[str, Any] | None = None


class _Version(msgspec.Struct):
    schema_version: int = 1


class BadRecord(ValueError):
    """A record that cannot be applied; ``str(exc)`` is the DLQ reason."""


class Click(NamedTuple):
    """What the apply script needs of a valid click event."""

    user_id: str
    ts_us: int
    event_type: str
    event_id: str | None


_version_decoder = msgspec.json.Decoder(_Version)
_DECODERS = {1: msgspec.json.Decoder(ClickEventV1)}
def _decode(raw: bytes) -> ClickEventV1:
    try:
        return _DECODERS[1].decode(raw)
    except msgspec.ValidationError as first:
        try:
            version = _version_decoder.decode(raw).schema_version
        except msgspec.DecodeError:
            raise BadRecord(f"invalid event: {first}") from None
        if version in _DECODERS and version != 1:
            try:
                return _DECODERS[version].decode(raw)
            except msgspec.ValidationError as exc:
                raise BadRecord(f"invalid v{version} event: {exc}") from None
        raise BadRecord(f"invalid event: {first}") from None
    except msgspec.DecodeError as exc:
        raise BadRecord(f"not valid JSON: {exc}") from None


def parse_click(raw: bytes, now_us: int, max_future_us: int, max_id_bytes: int) -> Click:
    """Validate one raw record. Raises BadRecord with a reason a person can read."""
    ev = _decode(raw)
    if ev.schema_version not in _DECODERS:
        raise BadRecord(f"unsupported schema_version {ev.schema_version} (supported: {sorted(_DECODERS)})")
    user_id = ev.user_id if isinstance(ev.user_id, str) else str(ev.user_id)
    if not user_id:
        raise BadRecord("user_id is empty - at `$.user_id`")
    if len(user_id) * 4 > max_id_bytes and len(user_id.encode("utf-8")) > max_id_bytes:
        raise BadRecord(f"user_id is longer than {max_id_bytes} bytes - at `$.user_id`")
    if not ev.event_type:
        raise BadRecord("event_type is empty - at `$.event_type`")
    if len(ev.event_type) > MAX_TYPE_LEN:
        raise BadRecord(f"event_type is longer than {MAX_TYPE_LEN} characters - at `$.event_type`")
    try:
        ts_us = parse_timestamp(ev.timestamp)
    except BadTimestamp as exc:
        raise BadRecord(f"{exc} - at `$.timestamp`") from None
    if ts_us > now_us + max_future_us:
        raise BadRecord(
            f"timestamp {ev.timestamp!r} is more than {max_future_us // 3_600_000_000} h ahead of the wall clock"
            " - at `$.timestamp`")
    event_id = ev.event_id if ev.event_id is None or isinstance(ev.event_id, str) else str(ev.event_id)
    return Click(user_id, ts_us, ev.event_type, event_id)


class Routing(msgspec.Struct):
    """The producer only needs the user id to pick a partition."""

    user_id: str | int


routing_decoder = msgspec.json.Decoder(Routing)

"""Event-time parsing and formatting. Internally every time is integer microseconds since
the Unix epoch, UTC (exact in a Lua double: 2^53 µs is in the year 2255).

Accepted inputs (DESIGN §2): ISO-8601 with an offset (converted to UTC) or ``Z``; naive
ISO-8601 (read as UTC); ``T`` or a space between date and time; a trailing `` UTC`` / ``GMT``
(as in warehouse exports); any number of fraction digits (beyond microseconds they are
truncated).  Numbers (and strings of digits) are epoch time, their unit read from their
magnitude: below 1e11 seconds, below 1e14 milliseconds (the documented unit; 1e11 ms is
1973-03-03), otherwise microseconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

US_PER_MS = 1_000
US_PER_MINUTE = 60_000_000
MIN_US = 0                                  # 1970-01-01T00:00:00Z
MAX_US = 4_102_444_800_000_000              # 2100-01-01T00:00:00Z (µs stay exact in a Lua double)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
_DIGITS = frozenset("0123456789")
_minute_cache: dict[str, int] = {}


class BadTimestamp(ValueError):
    pass


def _minute_us(prefix: str) -> int:
    """Epoch µs of 'YYYY-MM-DDTHH:MM' (UTC), memoized: events share few distinct minutes."""
    us = _minute_cache.get(prefix)
    if us is None:
        dt = datetime(int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10]),
                      int(prefix[11:13]), int(prefix[14:16]), tzinfo=timezone.utc)
        us = (dt - _EPOCH) // _ONE_US
        if len(_minute_cache) > 100_000:
            _minute_cache.clear()
        _minute_cache[prefix] = us
    return us



def _fast_iso(s: str) -> int | None:
    """YYYY-MM-DD[T ]HH:MM:SS[.f+][Z|±HH:MM] without datetime objects; None if not that shape."""
    n = len(s)
    if n < 19 or s[4] != "-" or s[7] != "-" or s[10] not in "Tt " or s[13] != ":" or s[16] != ":":
        return None
    date_time = s[0:4] + s[5:7] + s[8:10] + s[11:13] + s[14:16] + s[17:19]
    if not _DIGITS.issuperset(date_time):
        return None
    sec = int(s[17:19])
    if sec > 59 or int(s[5:7]) - 1 not in range(12) or int(s[11:13]) > 23 or int(s[14:16]) > 59:
        return None
    i = 19
    frac = 0
    if i < n and s[i] == ".":
        j = i + 1
        while j < n and s[j] in _DIGITS:
            j += 1
        digits = s[i + 1:j]
        if not digits:
            return None
        frac = int((digits + "000000")[:6])
        i = j
    offset_us = 0
    rest = s[i:]
    if rest in ("Z", "z", ""):
        pass
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":" and _DIGITS.issuperset(rest[1:3] + rest[4:6]):
        hh, mm = int(rest[1:3]), int(rest[4:6])
        if hh > 23 or mm > 59:
            return None
        offset_us = (hh * 60 + mm) * US_PER_MINUTE * (1 if rest[0] == "+" else -1)
    else:
        return None
    try:
        base = _minute_us(s[0:16])
    except ValueError:  # e.g. February 30th
        return None
    return base + sec * 1_000_000 + frac - offset_us


def _slow_iso(value: str) -> int:
    text = value.strip()
    for suffix in (" UTC", "UTC", " GMT", "GMT"):
        if text.endswith(suffix):
            text = text[: -len(suffix)] + "+00:00"
            break
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise BadTimestamp(f"timestamp {value[:64]!r} is not ISO-8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // _ONE_US


def _epoch_us(value: int | float) -> int:
    size = abs(value)
    if size < 1e11:
        return int(round(value * 1_000_000))
    if size < 1e14:
        return int(round(value * US_PER_MS))
    if size < 2**62:
        return int(value)
    raise BadTimestamp(f"timestamp {value} is out of range")


def parse_timestamp(value: object) -> int:
    """Event time in epoch µs (UTC). Raises BadTimestamp with a readable reason."""
    if isinstance(value, str):
        us = _fast_iso(value)
        if us is None:
            us = _epoch_us(int(value)) if value.isascii() and value.isdigit() else _slow_iso(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadTimestamp(f"timestamp {value} is not a number")
        us = _epoch_us(value)
    else:
        raise BadTimestamp(f"timestamp must be an ISO-8601 string or epoch time, got {type(value).__name__}")
    if us < MIN_US:
        raise BadTimestamp(f"timestamp {value!r} is before 1970-01-01T00:00:00Z")
    if us > MAX_US:
        raise BadTimestamp(f"timestamp {value!r} is after 2100-01-01T00:00:00Z")
    return us


def format_us(us: int) -> str:
    """ISO-8601 UTC with milliseconds and Z: 2026-11-01T10:30:00.123Z."""
    dt = _EPOCH + timedelta(microseconds=us - us % 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def minute_of(us: int) -> int:
    return us // US_PER_MINUTE

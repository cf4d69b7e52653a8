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

import re
from datetime import datetime, timedelta, timezone

US_PER_MS = 1_000
US_PER_MINUTE = 60_000_000
MIN_US = 0                                  # 1970-01-01T00:00:00Z
MAX_US = 4_102_444_800_000_000              # 2100-01-01T00:00:00Z (µs stay exact in a Lua double)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
_second_cache: dict[str, int | None] = {}
# after "YYYY-MM-DD?HH:MM:SS": optional fraction, then Z / ±HH:MM / nothing (naive = UTC)
_SUFFIX = re.compile(r"(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))?")


class BadTimestamp(ValueError):
    pass


def _second_us(prefix: str) -> int | None:
    """Epoch µs of 'YYYY-MM-DD[T ]HH:MM:SS' read as UTC, or None if not exactly that; memoized
    (events share few distinct seconds, so the strict checks run once per second of data)."""
    if prefix in _second_cache:
        return _second_cache[prefix]
    us = None
    if (len(prefix) == 19 and prefix[4] == "-" and prefix[7] == "-" and prefix[10] in "Tt "
            and prefix[13] == ":" and prefix[16] == ":"):
        digits = prefix[0:4] + prefix[5:7] + prefix[8:10] + prefix[11:13] + prefix[14:16] + prefix[17:19]
        if digits.isascii() and digits.isdigit():
            try:
                dt = datetime(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]),
                              int(digits[10:12]), int(digits[12:14]), tzinfo=timezone.utc)
                us = (dt - _EPOCH) // _ONE_US
            except ValueError:        # month 13, February 30th, second 60 ...
                us = None
    if len(_second_cache) > 200_000:
        _second_cache.clear()
    _second_cache[prefix] = us
    return us


def _fast_iso(s: str) -> int | None:
    """YYYY-MM-DD[T ]HH:MM:SS[.f+][Z|±HH:MM] without datetime objects; None if not that shape."""
    if len(s) == 24 and s[19] == "." and s[23] == "Z":          # the usual shape, milliseconds and Z
        frac = s[20:23]
        if frac.isascii() and frac.isdigit():
            base = _second_us(s[:19])
            return None if base is None else base + int(frac) * 1000
    base = _second_us(s[:19])
    if base is None:
        return None
    m = _SUFFIX.fullmatch(s, 19)
    if m is None:
        return None
    frac, _z, sign, hh, mm = m.groups()
    us = base + (int((frac + "00000")[:6]) if frac else 0)
    if sign:
        h, mi = int(hh), int(mm)
        if h > 23 or mi > 59:
            return None
        us -= (h * 60 + mi) * US_PER_MINUTE * (1 if sign == "+" else -1)
    return us


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


_MINUTE_US = 60_000_000
_minutes: dict[int, str] = {}


def _minute_text(minute: int) -> str:
    """'YYYY-MM-DDTHH:MM:' of a minute since the epoch (cached: an export formats 100,000s of times
    within a few hundred minutes; strftime was most of its Python time)."""
    text = _minutes.get(minute)
    if text is None:
        if len(_minutes) > 100_000:
            _minutes.clear()
        text = _minutes[minute] = (_EPOCH + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:")
    return text


def format_us_exact(us: int) -> str:
    """ISO-8601 UTC with microseconds and Z: 2026-11-01T10:30:00.123456Z (profile times)."""
    minute, rest = divmod(us, _MINUTE_US)
    return f"{_minute_text(minute)}{rest // 1_000_000:02d}.{rest % 1_000_000:06d}Z"


def format_us(us: int) -> str:
    """ISO-8601 UTC with milliseconds and Z: 2026-11-01T10:30:00.123Z."""
    minute, rest = divmod(us, _MINUTE_US)
    return f"{_minute_text(minute)}{rest // 1_000_000:02d}.{rest // 1000 % 1000:03d}Z"

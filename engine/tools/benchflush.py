"""The longest single script call while a flush closes many open sessions (`shopstream bench --flush N`).

Every script call blocks Redis for everyone else, so no call may do unbounded work: the apply and
advance_watermark close at most ``close_per_call`` users and minutes per call and continue in the
next.  This publishes one click for each of N users (all within ten minutes of event time, so every
session is still open), consumes them, then times the final flush with Redis's SLOWLOG (every
calls over 1 ms) and INFO commandstats, and reports the longest EVALSHA, the mean and the whole flush.
"""

from __future__ import annotations

import asyncio
import time

import redis

from .. import control
from .bench import _ensure_groups
from ..connection import async_client
from .servers import embedded_redis
from ..eventtime import format_us
from ..pipeline import start_consumers
from ..producer import publish
from ..settings import Settings

T0_US = 1_793_520_000_000_000          # 2026-11-01T06:40:00Z
SLOWLOG_LEN = 100_000
SLOW_US = 1_000                        # calls longer than this are logged (each with its duration)


def _clicks(users: int):
    step = 600_000_000 // max(users, 1)  # ten minutes of event time in all
    for u in range(users):
        yield b'{"user_id":"u%d","event_type":"page_view","timestamp":"%s"}' % (u, format_us(T0_US + u * step).encode())


def run(sessions: int, close_per_call: int | None = None, consumers: int = 2) -> dict:
    settings = Settings(idle_timeout_ms=0, metrics_port=None)
    if close_per_call:
        settings = settings.replace(close_per_call=close_per_call)
    with embedded_redis() as url:
        settings = settings.replace(redis_url=url)
        client = redis.Redis.from_url(url)
        _ensure_groups(url, settings)
        publish(client, _clicks(sessions), settings)
        for proc in start_consumers(settings, consumers):
            if proc.wait():
                raise RuntimeError("a consumer failed")
        client.config_set("slowlog-max-len", SLOWLOG_LEN)
        client.config_set("slowlog-log-slower-than", SLOW_US)
        client.slowlog_reset()
        client.config_resetstat()

        async def flush():
            aclient = async_client(url)
            try:
                return await control.flush(aclient, settings)
            finally:
                await aclient.aclose()
        started = time.perf_counter()
        closed, _ = asyncio.run(flush())
        seconds = time.perf_counter() - started
        stats = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        slow = [entry["duration"] for entry in client.slowlog_get(SLOWLOG_LEN)
                if entry["command"].split(b" ", 1)[0].upper() == b"EVALSHA"]
        client.config_set("slowlog-log-slower-than", 10_000)
        return {"sessions_closed": closed, "flush_seconds": round(seconds, 2), "script_calls": stats["calls"],
                "longest_call_ms": round(max(slow, default=0) / 1000, 2),
                "mean_call_ms": round(stats["usec"] / max(stats["calls"], 1) / 1000, 2),
                "calls_over_ms": {ms: sum(d > ms * 1000 for d in slow) for ms in (5, 10, 20)},
                "close_per_call": settings.close_per_call}


def print_report(report: dict) -> None:
    print(f"flush of {report['sessions_closed']:,} open sessions: {report['flush_seconds']} s in "
          f"{report['script_calls']:,} script calls of at most {report['close_per_call']} users each; "
          f"longest call {report['longest_call_ms']} ms (SLOWLOG), mean {report['mean_call_ms']} ms; "
          f"calls over 5/10/20 ms: {'/'.join(str(n) for n in report['calls_over_ms'].values())}")

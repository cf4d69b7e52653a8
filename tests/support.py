"""What several test files share, so that no test file imports another.

- waiting: ``wait_until`` (sync) and ``wait_until_async``: poll a condition with a deadline;
  the only polling loops of the suite (tests never sleep to wait).
- the command line as a user runs it: ``REPO``, ``shopstream()``, ``consumer()`` (a ``consume``
  process with ``FAST`` settings), ``read_jsonl``;
- checks against the batch reference (tests/reference.py): ``reference_inputs``, ``check_export``
  (an export folder), ``strip`` and ``check_against_reference`` (in-process outputs);
- the rule tables' time units and a transaction record: ``S``, ``MIN``, ``HOUR``, ``T0``, ``T_HOUR``, ``tx``;
- ``acl_server``: a real server with ops/redis/users.acl (a fixture: import it into the test module).

In-process engine drivers are in tests/helpers.py, the lake's input and readers in tests/lakedata.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from shopstream.engine.producer import read_events
from shopstream.engine.schema import BadRecord, parse_click

from . import reference as ref
from .helpers import by_rule, format_us_us

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.02


# -- waiting ----------------------------------------------------------------------------------------

def _describe(what: str | Callable[[], Any]) -> str:
    return what() if callable(what) else what


def wait_until(condition: Callable[[], Any], timeout: float = 60.0, what: str | Callable[[], Any] = "condition",
               poll: float = POLL_S) -> Any:
    """Poll ``condition()`` until it is true (returned) or fail after ``timeout`` seconds with
    "timed out waiting for <what>" (``what`` may be a callable giving the details at that moment)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {_describe(what)}")
        time.sleep(poll)
    return result


async def wait_until_async(condition: Callable[[], Any | Awaitable[Any]], timeout: float = 60.0,
                           what: str | Callable[[], Any] = "condition", poll: float = POLL_S) -> Any:
    """``wait_until`` inside an event loop: ``condition`` may be a plain or an async function;
    the loop keeps running between polls (the engine under test runs in it)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {_describe(what)}")
        await asyncio.sleep(poll)


# -- the command line -------------------------------------------------------------------------------

FAST = {"SHOPSTREAM_LEASE_TTL_MS": "1000", "SHOPSTREAM_HEARTBEAT_MS": "200", "SHOPSTREAM_BATCH_SIZE": "40",
        "SHOPSTREAM_LINGER_MS": "0", "SHOPSTREAM_IDLE_TIMEOUT_MS": "0", "SHOPSTREAM_METRICS_PORT": "0"}


def shopstream(*args: str, env: dict | None = None, timeout: float = 300) -> str:
    """Run ``shopstream <args>`` as a user does; its stdout (a non-zero exit fails with stderr)."""
    proc = subprocess.run([sys.executable, "-m", "shopstream.engine.cli", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def consumer(env: dict, *extra: str) -> subprocess.Popen:
    """A ``shopstream consume`` process with short leases and heartbeats (FAST)."""
    return subprocess.Popen([sys.executable, "-m", "shopstream.engine.cli", "--log-level", "warning", "consume",
                             *extra], cwd=REPO, env={**os.environ, **FAST, **env})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- checks against the batch reference -------------------------------------------------------------

def reference_inputs(path: Path, late_records: set[str]):
    """(user, ts_us, type) of every valid click of ``path`` except the ones exported as late."""
    now = time.time_ns() // 1000
    events = []
    for line in path.read_bytes().splitlines():
        if line.decode("utf-8", "replace") in late_records:
            continue
        try:
            c = parse_click(line, now, 86_400_000_000, 256)
        except BadRecord:
            continue
        events.append((c.user_id, c.ts_us, c.event_type))
    return events


def check_export(out: Path, dataset: Path) -> None:
    """An export folder of a run over ``dataset`` equals the batch reference: nothing lost, nothing twice."""
    late = read_jsonl(out / "late.jsonl")
    dlq = (out / "dlq.jsonl").read_text().splitlines()
    events = reference_inputs(dataset, {x["record"] for x in late})
    assert strip(read_jsonl(out / "sessions.jsonl")) == ref.sessions(events)
    assert by_rule(read_jsonl(out / "alerts.jsonl")) == ref.alerts(events)
    assert len(events) + len(late) + len(dlq) == len(list(read_events(dataset)))


def strip(sessions):
    """The fields of a session the reference computes."""
    return [{k: s[k] for k in ("user_id", "start", "end", "event_count", "counts")} for s in sessions]


def check_against_reference(out, events, arrival=None):
    """arrival: the order events were applied in, when it is event-time order (the burst estimate
    depends on what arrived before; the other results do not)."""
    assert strip(out.sessions) == ref.sessions(events)
    assert by_rule(out.alerts, "events_per_minute") == ref.alerts(events)
    # decided on the purchase / checkout, retracted at the close when the whole session refutes it:
    # the users whose speed signal stands are the reference's
    standing = sorted({p["user_id"] for p in out.profiles if "inhuman_speed=" in p.get("reasons", "")})
    assert standing == sorted({user for _, user in ref.inhuman_speed(events)}), (standing, ref.inhuman_speed(events), by_rule(out.alerts, "inhuman_speed"))
    if arrival is not None:
        assert by_rule(out.alerts, "inhuman_speed") == ref.inhuman_speed(events)   # in order: never retracted
        assert by_rule(out.alerts, "burst") == ref.bursts(arrival)
    expected = ref.minutes(events)
    assert [(m["minute"], m["events"]) for m in out.minutes] == [(m["minute"], m["events"]) for m in expected]
    for got, want in zip(out.minutes, expected):
        assert abs(got["unique_users"] - want["unique_users"]) <= max(1, 0.02 * want["unique_users"])
    assert out.late == [] and out.dlq == []


# -- rule tables ------------------------------------------------------------------------------------

T0 = 1_793_520_000_000_000          # 2026-11-01T06:40:00Z, a minute boundary
S, MIN = 1_000_000, 60_000_000
HOUR = 60 * MIN
T_HOUR = (T0 // HOUR + 1) * HOUR


def tx(user: str, ts: int, status: str = "failed", amount: str = "9.99", card: str = "fp_1", ip: str = "10.0.0.1",
       country: str = "US", tid: str | None = None) -> dict:
    """A payment record (the transactions stream)."""
    return {"transaction_id": tid or f"t-{user}-{ts}-{card}", "user_id": user, "amount": amount, "currency": "USD",
            "status": status, "card_fingerprint": card, "ip": ip, "country": country, "timestamp": format_us_us(ts)}


# -- a server with the ACL users --------------------------------------------------------------------

ACL = REPO / "ops" / "redis" / "users.acl"


@pytest.fixture
def acl_server(tmp_path):
    """A real redis-server with ops/redis/users.acl; yields url(user, password)."""
    from shopstream.engine.tools.servers import free_port, redis_server_binary, wait_for_redis
    port = free_port()
    acl = tmp_path / "users.acl"
    acl.write_text(ACL.read_text())
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", str(tmp_path), "--aclfile", str(acl)], stdout=subprocess.DEVNULL)
    url = lambda user, pw: f"redis://{user}:{pw}@127.0.0.1:{port}/0"  # noqa: E731
    try:
        wait_for_redis(url("shopstream-operator", "change-me-operator"), proc)
        yield url
    finally:
        proc.kill()
        proc.wait()

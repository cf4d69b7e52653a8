"""Waiting for Redis (engine/connection.py retry_until_available: redis-py's Retry with exponential
backoff) and the replay's progress reporting (the bar itself is the command line's, engine/progress.py)."""

from __future__ import annotations

import asyncio
import io

import pytest
import redis

from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff

from shopstream.engine.connection import BACKOFF_CAP_S, UNAVAILABLE, backoff_retry, retry_until_available

QUICK = Retry(EqualJitterBackoff(cap=0.01, base=0.001), -1, supported_errors=UNAVAILABLE)   # the default's shape, faster


class Flaky:
    """A call that fails ``failures`` times with ``error`` and then answers."""

    def __init__(self, failures: int, error: Exception = redis.ConnectionError("down")):
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_the_backoff_doubles_with_jitter_up_to_the_cap():
    backoff = backoff_retry()._backoff
    delays = [[backoff.compute(failures) for failures in range(1, 9)] for _ in range(200)]
    for failures, seen in enumerate(zip(*delays), start=1):
        top = min(BACKOFF_CAP_S, 0.1 * 2 ** failures)
        assert all(top / 2 <= d <= top for d in seen), failures       # half fixed, half random
        assert len(set(seen)) > 1                                       # jitter
    assert max(map(max, delays)) <= BACKOFF_CAP_S


async def test_a_call_is_repeated_until_redis_answers(caplog):
    call = Flaky(3, redis.ConnectionError("Connection refused"))
    assert await retry_until_available(call, "joining", retry=QUICK) is True
    assert call.calls == 4
    assert caplog.text.count("redis unavailable (Connection refused); joining again") == 3


async def test_stop_ends_the_wait_at_the_next_failure():
    stopping = asyncio.Event()
    call = Flaky(10**9)
    stopping.set()
    assert await asyncio.wait_for(retry_until_available(call, "joining", stopping), 5) is False
    assert call.calls == 1


async def test_only_unavailable_errors_are_retried():
    call = Flaky(1, redis.ResponseError("NOSCRIPT"))
    with pytest.raises(redis.ResponseError):
        await retry_until_available(call, "joining", retry=QUICK)
    assert call.calls == 1


async def test_a_bounded_retry_gives_up_with_the_last_error():
    call = Flaky(10, redis.TimeoutError("slow"))
    with pytest.raises(redis.TimeoutError):
        await retry_until_available(call, "joining", retry=backoff_retry(retries=2))
    assert call.calls == 3


# -- the replay's progress ---------------------------------------------------------------------------

def test_replay_reports_progress_to_the_callers_factory_and_draws_nothing_itself(backend, settings, tmp_path,
                                                                                  capsys):
    from shopstream.engine.producer import replay
    (tmp_path / "clicks.json").write_bytes(b"\n".join(
        b'{"user_id": "u%d", "event_type": "page_view", "timestamp": "2026-11-02T10:00:00Z"}' % i for i in range(50)))
    seen = []

    class Recorder:
        def __init__(self, total, label):
            seen.append(("start", total, label))

        def update(self, done):
            seen.append(("update", done))

        def close(self):
            seen.append(("close",))

    assert replay(backend.sync, tmp_path / "clicks.json", settings, progress=Recorder) == {"clicks": 50}
    assert seen[0] == ("start", 50, "replay clicks") and seen[-2:] == [("update", 50), ("close",)]
    backend.sync.flushall()
    assert replay(backend.sync, tmp_path / "clicks.json", settings) == {"clicks": 50}     # no bar by default
    assert capsys.readouterr() == ("", "")


def test_the_command_lines_bar_draws_on_a_terminal_only():
    from shopstream.engine.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = Progress(100, "replay clicks", stream=stream)
        bar.last -= 1                        # (it redraws at most every 0.2 s)
        bar.update(50)
        bar.close()
    assert terminal.getvalue().startswith("\rreplay clicks [" + "#" * 15 + " " * 15 + "] 50/100 ")
    assert terminal.getvalue().endswith("\n") and pipe.getvalue() == ""


async def test_a_connection_closed_under_a_write_is_waited_out_like_redis_down(caplog):
    """uvloop's RuntimeError for a write on a closed connection (issue 506) is Redis going away."""
    call = Flaky(2, RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed"))
    assert await retry_until_available(call, "joining", retry=QUICK) is True
    assert call.calls == 3 and caplog.text.count("joining again") == 2
    with pytest.raises(RuntimeError, match="a bug"):
        await retry_until_available(Flaky(1, RuntimeError("a bug")), "joining", retry=QUICK)

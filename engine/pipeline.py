"""One-shot processing of a file or a folder of sources: N consumer processes apply while the file
is replayed (an end-of-input signal tells them when a drained stream means the end) -> flush ->
export."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from . import control, export, producer
from .connection import async_client, sync_client
from .keys import CLICKS, STATE, SUPPORT, TX, Keys
from .settings import Settings


class NamespaceInUse(RuntimeError):
    pass


def child_env(settings: Settings) -> dict[str, str]:
    """Environment for a child process (consumer, worker) that must see exactly these settings;
    its /metrics goes on any free port, so several can run side by side."""
    env = dict(os.environ)
    for name, value in msgspec.structs.asdict(settings).items():
        if name == "redis_url":
            if value:
                env["REDIS_URL"] = value
        elif value is not None:
            env[f"SHOPSTREAM_{name.upper()}"] = str(value)
    env["SHOPSTREAM_METRICS_PORT"] = "0"
    return env


def start_consumers(settings: Settings, n: int) -> list[subprocess.Popen]:
    env = child_env(settings)
    cmd = [sys.executable, "-m", "shopstream.engine.cli", "--log-level", "warning", "consume", "--until-idle"]
    return [subprocess.Popen(cmd, env=env) for _ in range(n)]


@dataclass
class RunResult:
    published: dict[str, int]       # per source (engine/keys.py CLICKS, TX, SUPPORT; "catalog": products)
    seconds_replay: float           # from the start: the producer
    seconds_consume: float          # from the start (overlapping the replay) until the consumers exit
    sessions_flushed: int
    written: dict[str, int]
    outputs: export.Outputs
    state: dict[str, int]
    seconds_flush: float = 0.0
    seconds_export: float = 0.0     # collect + write


async def partition_counters(client: Any, settings: Settings) -> dict[str, int]:
    totals = {"applied": 0, "duplicates": 0, "late": 0, "erased": 0}
    for part in Keys(settings.namespace, settings.partitions).all_partitions():
        values = await client.hmget(part.key(STATE), *totals)
        for name, value in zip(list(totals), values):
            totals[name] += int(value or 0)
    return totals


async def run_file(path: str | Path, out_dir: str | Path, settings: Settings, consumers: int = 2,
                   rate: float | None = None, reset: bool = False) -> RunResult:
    assert settings.redis_url
    aclient = async_client(settings.redis_url)
    try:
        if reset:
            await control.reset(aclient, settings)
        elif await control.namespace_keys(aclient, settings):
            raise NamespaceInUse(f"namespace {settings.namespace!r} already holds data on {settings.redis_url};"
                                 " use --namespace NEW or --reset")
        await control.ensure_groups(aclient, settings)
        client = sync_client(settings.redis_url)
        started = time.monotonic()
        # The consumers apply while the file is replayed; "open" keeps them from taking a stream they
        # have drained for the end of the input, "done" (after the last event) lets them finish.
        control.set_input_state(client, settings, control.INPUT_OPEN)
        # a folder's product catalog before the consumers start: they read it when they join, and the
        # clicks take their categories from it (as when the consumers started after the whole replay)
        published, rest = {}, None
        if Path(path).is_dir():
            published = producer.replay(client, path, settings, kinds={producer.CATALOG})
            rest = [CLICKS, TX, SUPPORT]
        procs = start_consumers(settings.replace(idle_timeout_ms=0), consumers)  # replay: no wall clock
        try:
            published.update(producer.replay(client, path, settings, rate=rate, progress=True, kinds=rest))
        except BaseException:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
            raise
        finally:
            control.set_input_state(client, settings, control.INPUT_DONE)
            client.close()
        replayed = time.monotonic()
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"consumer exit codes {codes}")
        consumed = time.monotonic()
        flushed, _ = await control.flush(aclient, settings)
        done_flush = time.monotonic()
        outputs = await export.collect(aclient, settings)
        written = export.write(outputs, out_dir)
        exported = time.monotonic()
        state = await partition_counters(aclient, settings)
        return RunResult(published, replayed - started, consumed - started, flushed, written, outputs, state,
                         done_flush - consumed, exported - done_flush)
    finally:
        await aclient.aclose()

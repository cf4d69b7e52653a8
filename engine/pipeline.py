"""One-shot processing of a file or a folder of sources: replay -> N consumer processes until
drained -> flush -> export."""

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
from .keys import STATE, Keys
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
    seconds_replay: float
    seconds_consume: float
    sessions_flushed: int
    written: dict[str, int]
    outputs: export.Outputs
    state: dict[str, int]


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
        published = producer.replay(client, path, settings, rate=rate, progress=True)
        client.close()
        replayed = time.monotonic()
        procs = start_consumers(settings.replace(idle_timeout_ms=0), consumers)  # replay: no wall clock
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"consumer exit codes {codes}")
        consumed = time.monotonic()
        flushed, _ = await control.flush(aclient, settings)
        outputs = await export.collect(aclient, settings)
        written = export.write(outputs, out_dir)
        state = await partition_counters(aclient, settings)
        return RunResult(published, replayed - started, consumed - replayed, flushed, written, outputs, state)
    finally:
        await aclient.aclose()

"""Running a coroutine from a command: uvloop when installed, else asyncio."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from .connection import async_client
from .settings import Settings


class _Result:
    """A coroutine's result behind a constant repr: Python 3.11's asyncio.Runner formats the main
    task's repr (its result's, in full) in a ValueError it discards when it restores SIGINT; for a
    run's outputs (100,000s of records) that took about a second."""

    __slots__ = ("value",)

    def __repr__(self) -> str:
        return "<result>"


async def _boxed(coro: Awaitable) -> _Result:
    box = _Result()
    box.value = await coro
    return box


def run(coro: Awaitable) -> Any:
    try:
        import uvloop
        return uvloop.run(_boxed(coro)).value
    except ImportError:  # pragma: no cover - uvloop is not on Windows
        return asyncio.run(_boxed(coro)).value


def call(url: str, settings: Settings, fn: Callable[..., Awaitable], *args: Any) -> Any:
    """Run ``await fn(client, settings, *args)`` with an asyncio client of ``url``."""
    async def main():
        client = async_client(url)
        try:
            return await fn(client, settings, *args)
        finally:
            await client.aclose()
    return run(main())

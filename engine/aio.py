"""Running a coroutine from a command: uvloop when installed, else asyncio."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from .connection import async_client
from .settings import Settings


def run(coro: Awaitable) -> Any:
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is not on Windows
        return asyncio.run(coro)


def call(url: str, settings: Settings, fn: Callable[..., Awaitable], *args: Any) -> Any:
    """Run ``await fn(client, settings, *args)`` with an asyncio client of ``url``."""
    async def main():
        client = async_client(url)
        try:
            return await fn(client, settings, *args)
        finally:
            await client.aclose()
    return run(main())

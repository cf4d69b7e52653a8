"""Reading a stream page by page: the one XRANGE pager (asyncio client)."""

from __future__ import annotations

from typing import Any, AsyncIterator

PAGE = 5000


async def pages(client: Any, stream: str, after: bytes | str | None = None, upto_now: bool = False,
                count: int = PAGE) -> AsyncIterator[list[tuple[bytes, dict[bytes, bytes]]]]:
    """The entries of ``stream``, ``count`` at a time: from the start, or after entry id ``after``
    (exclusive); with ``upto_now``, only those that exist when the first page is read (entries
    appended meanwhile are left out: a pass that changes the stream ends)."""
    end: bytes | str = "+"
    if upto_now:
        last = await client.xrevrange(stream, count=1)
        if not last:
            return
        end = last[0][0]
    start = "-" if after is None else b"(" + (after.encode() if isinstance(after, str) else after)
    while True:
        page = await client.xrange(stream, min=start, max=end, count=count)
        if page:
            yield page
        if len(page) < count:
            return
        start = b"(" + page[-1][0]

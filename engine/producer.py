"""Producer API: ``publish(client, events, settings, source)`` appends events to the
partitioned input streams.

An event goes to ``<ns>:{p}:<source>`` (clicks, tx or support) with p = crc32(user_id) mod
partitions (see engine/partitioning.py), as one field ``e`` holding the event's JSON, byte for
byte.  The producer reads only ``user_id``; validation happens in the consumer, so a record this
producer cannot route (not JSON, no user id) still goes to a partition and from there to the
dead-letter stream with its reason: one path for bad input, whatever wrote it.

``replay`` reads the four sample sources (DESIGN §2): a clickstream (JSON Lines or array),
``transactions.csv`` (each row becomes a JSON object of its columns), support tickets and the
product catalog (JSON); the kind of a file is read from its records; a folder replays the
catalog first (clicks are joined with it), then clicks, transactions and tickets.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import msgspec

from . import catalog
from .keys import CLICKS, SUPPORT, TX, Keys
from .partitioning import partition_of, partition_of_bytes
from .schema import routing_decoder
from .settings import Settings

PIPELINE_SIZE = 1000
BOM = b"\xef\xbb\xbf"
_encoder = msgspec.json.Encoder()


def _as_bytes(event: Any) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode("utf-8")
    if isinstance(event, msgspec.Raw):
        return bytes(event)
    return _encoder.encode(event)


def route(raw: bytes, partitions: int) -> int:
    try:
        user_id = routing_decoder.decode(raw).user_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return partition_of_bytes(raw, partitions)
    return partition_of(user_id if isinstance(user_id, str) else str(user_id), partitions)


def publish(client: Any, events: Iterable[Any], settings: Settings, source: str = CLICKS) -> int:
    """Append events (dicts, Structs, JSON bytes or str) to their partitions' ``source`` stream
    (engine/keys.py CLICKS, TX or SUPPORT). Returns the count.

    ``client`` is a sync redis-py client (single node or cluster).
    """
    keys = Keys(settings.namespace, settings.partitions)
    streams = [p.key(source) for p in keys.all_partitions()]
    maxlen, parts = settings.input_maxlen, settings.partitions
    pipe = client.pipeline(transaction=False)
    pending = sent = 0
    for event in events:
        raw = _as_bytes(event)
        # execute_command skips xadd()'s argument handling: ~15 % of the producer's CPU per event
        pipe.execute_command("XADD", streams[route(raw, parts)], "MAXLEN", "~", maxlen, "*", "e", raw)
        pending += 1
        if pending == PIPELINE_SIZE:
            pipe.execute()
            sent += pending
            pending = 0
    if pending:
        pipe.execute()
        sent += pending
    return sent


def read_events(path: str | Path) -> Iterator[bytes]:
    """Raw JSON records of a file: JSON Lines, one JSON array, or CSV with a header row."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(4096).removeprefix(BOM).lstrip()
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                yield _encoder.encode({k: v for k, v in row.items() if k is not None})
        return
    if head.startswith(b"["):
        try:
            items = msgspec.json.decode(path.read_bytes().removeprefix(BOM), type=list[msgspec.Raw])
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path}: starts like a JSON array but is not valid JSON ({exc})") from None
        for item in items:
            yield bytes(item)
        return
    with path.open("rb") as fh:
        for n, line in enumerate(fh):
            line = (line.removeprefix(BOM) if n == 0 else line).strip()
            if line:
                yield line


class _Shape(msgspec.Struct):
    transaction_id: Any = None
    ticket_id: Any = None
    product_id: Any = None
    user_id: Any = None


_shape = msgspec.json.Decoder(_Shape)
CATALOG = "catalog"
SOURCE_FILES = {CATALOG: "product_catalog.json", CLICKS: "clickstream_events.json", TX: "transactions.csv",
                SUPPORT: "customer_support_interactions.json"}


def kind_of(records: list[bytes]) -> str:
    """clicks, tx, support or catalog, from the first records that parse."""
    for raw in records[:50]:
        try:
            shape = _shape.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if shape.transaction_id is not None:
            return TX
        if shape.ticket_id is not None:
            return SUPPORT
        if shape.product_id is not None and shape.user_id is None:
            return CATALOG
        return CLICKS
    return CLICKS


def sources_of(path: str | Path) -> list[tuple[str, Path]]:
    """The (kind, file) pairs a path stands for: a file, or a folder of the sample files."""
    path = Path(path)
    if not path.is_dir():
        return [("", path)]
    found = [(kind, path / name) for kind, name in SOURCE_FILES.items() if (path / name).is_file()]
    if not found:
        raise ValueError(f"{path}: none of {', '.join(SOURCE_FILES.values())} is in this folder")
    return found


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int | None, label: str, stream=sys.stderr):
        self.total, self.label, self.stream = total, label, stream
        self.enabled = stream.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {done:,}/{self.total:,} {rate:,.0f}/s ")
        else:
            self.stream.write(f"\r{self.label} {done:,} {rate:,.0f}/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def replay(client: Any, path: str | Path, settings: Settings, rate: float | None = None) -> dict[str, int]:
    """Publish a file's (or a folder's) records, optionally at ``rate`` events/s, with a progress
    bar. Returns records published per kind (the catalog: products loaded)."""
    done: dict[str, int] = {}
    for kind, file in sources_of(path):
        events = list(read_events(file))
        kind = kind or kind_of(events)
        if kind == CATALOG:
            loaded, _dead = catalog.load(client, events, settings)
            done[kind] = done.get(kind, 0) + loaded
            continue
        progress = Progress(len(events), f"replay {kind}")
        start = time.monotonic()
        chunk = PIPELINE_SIZE if not rate else max(1, min(PIPELINE_SIZE, int(rate / 50)))
        sent = 0
        for i in range(0, len(events), chunk):
            sent += publish(client, events[i:i + chunk], settings, kind)
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            progress.update(sent)
        progress.close()
        done[kind] = done.get(kind, 0) + sent
    return done

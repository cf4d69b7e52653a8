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

Replication is asynchronous: an XADD is acknowledged by the primary before its replicas have it,
so a primary lost right after the reply loses it.  With ``wait_replicas`` = n, a batch counts as
published only once n replicas of every primary that took a part of it confirm it (``WAIT n
timeout`` on the connection that wrote); otherwise ``NotReplicated`` is raised and the caller
retries the batch (events with an ``event_id`` are deduplicated by the consumers).
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator

import msgspec
from redis.exceptions import MovedError, ResponseError

from . import catalog
from .connection import UNAVAILABLE, is_cluster_client
from .keys import CLICKS, SUPPORT, TX, Keys
from .metrics import BACKPRESSURE
from .partitioning import partition_of, partition_of_bytes
from .schema import routing_decoder
from .settings import Settings

PIPELINE_SIZE = 1000
MOVED_RETRIES = 3
BOM = b"\xef\xbb\xbf"
_encoder = msgspec.json.Encoder()


def _as_bytes(event: Any) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode("utf-8")
    if isinstance(event, msgspec.Raw):
        return bytes(event)
    try:
        return _encoder.encode(event)
    except Exception as exc:  # e.g. nested too deeply (RecursionError): not JSON, so dead-lettered
        return f"unencodable {type(event).__name__} ({type(exc).__name__}: {exc})".encode()


def route(raw: bytes, partitions: int) -> int:
    """The record's partition: of its user id, or of its bytes when it has none we can read.
    Never raises: whatever a client wrote (not JSON, no user id, nested 5,000 levels deep so
    that the decoder gives up with RecursionError) goes to some partition, and from there to
    the dead-letter stream with the consumer's reason."""
    try:
        user_id = routing_decoder.decode(raw).user_id
    except Exception:
        return partition_of_bytes(raw, partitions)
    return partition_of(user_id if isinstance(user_id, str) else str(user_id), partitions)


class BackPressure(RuntimeError):
    """An input stream holds input_hard_cap entries: its consumers are behind (or gone).  Nothing of
    the batch was written (on a cluster too: every master's streams are checked first);
    ``published`` events of the same publish() call were, before it.
    Input is never trimmed unread (engine/retention.py), so the producer has to wait instead."""

    def __init__(self, stream: str, length: int, cap: int, published: int = 0):
        self.stream, self.length, self.cap, self.published = stream, length, cap, published
        super().__init__(f"stream {stream} holds {length:,} entries, at its cap (input_hard_cap = {cap:,}); input "
                         "is trimmed only once acknowledged, so its consumers are behind: scale consumers or "
                         "raise input_hard_cap")


class NotReplicated(RuntimeError):
    """Fewer than wait_replicas replicas confirmed a batch within wait_timeout_ms: it may be lost
    if its primary fails now (it is written there; retrying it is safe with event ids)."""


def publish(client: Any, events: Iterable[Any], settings: Settings, source: str = CLICKS) -> int:
    """Append events (dicts, Structs, JSON bytes or str) to their partitions' ``source`` stream
    (engine/keys.py CLICKS, TX or SUPPORT). Returns the count.

    ``client`` is a sync redis-py client (single node or cluster).
    """
    keys = Keys(settings.namespace, settings.partitions)
    streams = [p.key(source) for p in keys.all_partitions()]
    parts = settings.partitions
    send = _send_by_master if is_cluster_client(client) else _send
    batch: list[tuple[str, bytes]] = []
    sent = 0
    try:
        for event in events:
            raw = _as_bytes(event)
            batch.append((streams[route(raw, parts)], raw))
            if len(batch) == PIPELINE_SIZE:
                send(client, batch, settings)
                sent += len(batch)
                batch = []
        if batch:
            send(client, batch, settings)
            sent += len(batch)
    except BackPressure as exc:
        exc.published = sent
        BACKPRESSURE.labels(source).inc()
        raise
    return sent


def publish_mixed(client: Any, items: Iterable[tuple[str, Any]], settings: Settings) -> int:
    """Like publish(), for (source, event) pairs of several sources in arrival order: each event to
    its partition's stream of its source, in one pipeline per PIPELINE_SIZE events (single node).
    (publish() keeps its own loop: through this one it cost 0.12 us more per event, 2.50 -> 2.62,
    of the producer's 3 us budget; measured, 200k events, medians of 3.)"""
    keys = Keys(settings.namespace, settings.partitions)
    streams = {source: [p.key(source) for p in keys.all_partitions()] for source in (CLICKS, TX, SUPPORT)}
    parts = settings.partitions
    send = _send_by_master if is_cluster_client(client) else _send
    batch: list[tuple[str, bytes]] = []
    sent = 0
    try:
        for source, event in items:
            raw = _as_bytes(event)
            batch.append((streams[source][route(raw, parts)], raw))
            if len(batch) == PIPELINE_SIZE:
                send(client, batch, settings)
                sent += len(batch)
                batch = []
        if batch:
            send(client, batch, settings)
            sent += len(batch)
    except BackPressure as exc:
        exc.published = sent
        BACKPRESSURE.labels("mixed").inc()
        raise
    return sent


def _check_cap(client: Any, streams: list[str], cap: int) -> None:
    """One XLEN per target stream of a batch (one round trip): BackPressure at the cap."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.execute_command("XLEN", stream)
    for stream, length in zip(streams, pipe.execute()):
        if length >= cap:
            raise BackPressure(stream, length, cap)


def _send(client: Any, batch: list[tuple[str, bytes]], settings: Settings, check: bool = True) -> None:
    """One round trip; with wait_replicas, WAIT on the same connection after the XADDs.  No MAXLEN:
    input is trimmed only once every consumer group acknowledged it (engine/retention.py); a
    stream at input_hard_cap refuses the whole batch first (BackPressure)."""
    if check and settings.input_hard_cap:
        _check_cap(client, list(dict.fromkeys(stream for stream, _ in batch)), settings.input_hard_cap)
    replies = _xadd_packed(client, batch, settings.wait_replicas, settings.wait_timeout_ms)
    errors = [r for r in replies if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    if settings.wait_replicas and replies[-1] < settings.wait_replicas:
        raise NotReplicated(f"{replies[-1]} of {settings.wait_replicas} replicas confirmed {len(batch)} events "
                            f"within {settings.wait_timeout_ms} ms")


_XADD_HEAD: dict[str, bytes] = {}


def _xadd_head(stream: str) -> bytes:
    """The RESP of 'XADD <stream> * e', up to the payload's length (one per stream, kept)."""
    head = _XADD_HEAD.get(stream)
    if head is None:
        name = stream.encode()
        head = _XADD_HEAD[stream] = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\ne\r\n" % (len(name), name)
    return head


def _pack(batch: list[tuple[str, bytes]], wait_replicas: int, wait_timeout_ms: int) -> bytes:
    """The whole batch as one RESP buffer, packed here once (redis-py's pipeline packs each command
    through several Python layers: about half of the producer's CPU per event)."""
    head = _xadd_head
    parts = [b"%s$%d\r\n%s\r\n" % (head(stream), len(raw), raw) for stream, raw in batch]
    if wait_replicas:
        w, t = str(wait_replicas).encode(), str(wait_timeout_ms).encode()
        parts.append(b"*3\r\n$4\r\nWAIT\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(w), w, len(t), t))
    return b"".join(parts)


def _xadd_packed(client: Any, batch: list[tuple[str, bytes]], wait_replicas: int, wait_timeout_ms: int) -> list:
    """Send the packed batch on one connection of the client's pool and read every reply (an error
    reply as its exception, as a pipeline gives it).  The client's retry policy applies to the round
    trip as a whole, as it does to a pipeline's."""
    payload = _pack(batch, wait_replicas, wait_timeout_ms)
    expected = len(batch) + (1 if wait_replicas else 0)
    pool = client.connection_pool
    conn = pool.get_connection()

    def round_trip() -> list:
        conn.send_packed_command([payload], check_health=False)
        replies = []
        for _ in range(expected):
            try:
                replies.append(conn.read_response(disable_decoding=True))
            except ResponseError as exc:
                replies.append(exc)
        return replies

    try:
        return conn.retry.call_with_retry(round_trip, lambda _error: conn.disconnect())
    finally:
        pool.release(conn)


def _send_by_master(client: Any, batch: list[tuple[str, bytes]], settings: Settings) -> None:
    """Redis Cluster: each master's part of the batch through that node's own client.  Cheaper than
    redis-py's cluster pipeline, which works out every command's slot (~8 us per event here), and
    the only way to WAIT on the connection that wrote (the cluster pipeline would resend a failed
    part elsewhere and its WAIT to another node).  A part refused with MOVED (a failover or a
    resharding gave its slots to another master) is sent again where they live now."""
    todo = batch
    for _ in range(MOVED_RETRIES):
        node_of: dict[str, Any] = {}
        parts: dict[str, tuple[Any, list[tuple[str, bytes]]]] = {}
        for stream, raw in todo:
            node = node_of.get(stream) or node_of.setdefault(stream, client.get_node_from_key(stream))
            parts.setdefault(node.name, (node, []))[1].append((stream, raw))
        todo = []
        if settings.input_hard_cap:          # every master's streams first: all of the batch or nothing
            try:
                for node, part in parts.values():
                    _check_cap(client.get_redis_connection(node), list(dict.fromkeys(s for s, _ in part)),
                               settings.input_hard_cap)
            except MovedError:
                todo = [item for _, part in parts.values() for item in part]
                client.nodes_manager.initialize()
                continue
            except UNAVAILABLE:
                client.nodes_manager.initialize()
                raise
        for node, part in parts.values():
            try:
                _send(client.get_redis_connection(node), part, settings, check=False)
            except MovedError:
                todo += part
            except UNAVAILABLE:
                client.nodes_manager.initialize()        # learn who serves the slots now
                raise
        if not todo:
            return
        client.nodes_manager.initialize()
    raise NotReplicated(f"{len(todo)} events: their slots kept moving")


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
        data = path.read_bytes().removeprefix(BOM)
        try:
            items = [bytes(item) for item in msgspec.json.decode(data, type=list[msgspec.Raw])]
        except RecursionError:        # one record nested too deeply: split the array without the decoder
            items = list(array_items(data))
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path}: starts like a JSON array but is not valid JSON ({exc})") from None
        yield from items
        return
    with path.open("rb") as fh:
        for n, line in enumerate(fh):
            line = (line.removeprefix(BOM) if n == 0 else line).strip()
            if line:
                yield line


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def array_items(data: bytes) -> Iterator[bytes]:
    """The raw elements of a JSON array, found by counting brackets outside strings (no recursion,
    whatever the depth); an element is not validated (the consumer does that)."""
    depth, start = 0, None
    for token in _TOKEN.finditer(data):
        char = token.group()[:1]
        if char in b"[{":
            depth += 1
            if depth == 1:
                start = token.end()
        elif char in b"]}":
            depth -= 1
            if depth == 0:
                item = data[start:token.start()].strip()
                if item:
                    yield item
                return
        elif char == b"," and depth == 1:
            yield data[start:token.start()].strip()
            start = token.end()


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
        except Exception:                 # not JSON, not an object, nested too deeply, ...
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


def replay(client: Any, path: str | Path, settings: Settings, rate: float | None = None,
           progress: bool | Callable[[int | None, str], Any] = False,
           kinds: Collection[str] | None = None) -> dict[str, int]:
    """Publish a file's (or a folder's) records, optionally at ``rate`` events/s.  Returns records
    published per kind (the catalog: products loaded).  ``progress``: a factory (total, label) of an
    object with update(done) and close(), told how far each file is; True: the command line's bar
    on stderr (engine/progress.py).  ``kinds``: only a folder's files of these kinds."""
    if progress is True:
        from .progress import Progress as progress
    done: dict[str, int] = {}
    for kind, file in sources_of(path):
        if kinds is not None and kind and kind not in kinds:
            continue
        events = list(read_events(file))
        kind = kind or kind_of(events)
        if kind == CATALOG:
            loaded, _dead = catalog.load(client, events, settings)
            done[kind] = done.get(kind, 0) + loaded
            continue
        bar = progress(len(events), f"replay {kind}") if progress else None
        start = time.monotonic()
        chunk = PIPELINE_SIZE if not rate else max(1, min(PIPELINE_SIZE, int(rate / 50)))
        sent = 0
        for i in range(0, len(events), chunk):
            sent += publish(client, events[i:i + chunk], settings, kind)
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if bar:
                bar.update(sent)
        if bar:
            bar.close()
        done[kind] = done.get(kind, 0) + sent
    return done

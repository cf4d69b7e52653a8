"""A small known input for the lake tests: what each user did, so query results can be asserted.

Day 2026-11-02 (UTC).  Users and what they do:
  a1  ios, FR:     view -> product_view -> add_to_cart -> checkout -> purchase; pays 30.00 (completed)
  a2  web, FR:     view -> product_view -> add_to_cart; one failed payment of 12.50
  b1  android, US: view -> product_view -> add_to_cart -> checkout -> purchase; pays 99.99; a ticket
  b2  web, US:     view only
  bot web, US:     a view at 10:20, then 130 page views in one minute at 11:00 (two sessions; the
                   events_per_minute alert); one payment of 5.00
plus a catalog of two products and one record that is not JSON (a dead letter).

Also the lake tests' shared readers and driver: ``run_engine`` (publish this input, consume it),
``stream_entries`` / ``lake_entries`` (what the streams / the lake hold), ``traces`` (where a value
occurs in a lake folder).  Import after ``pytest.importorskip("deltalake")``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from shopstream.engine import control
from shopstream.engine.keys import Keys
from shopstream.engine import catalog
from shopstream.engine.keys import SUPPORT, TX
from shopstream.engine.producer import publish

from .helpers import consume_all

DAY = "2026-11-02"
FUNNEL = ("page_view", "product_view", "add_to_cart", "checkout", "purchase")
USERS = {  # user: (device, country, steps of the funnel reached, payments [(amount, status)])
    "a1": ("ios", "FR", 5, [("30.00", "completed")]),
    "a2": ("web", "FR", 3, [("12.50", "failed")]),
    "b1": ("android", "US", 5, [("99.99", "completed")]),
    "b2": ("web", "US", 1, []),
    "bot": ("web", "US", 1, [("5.00", "completed")]),
}
BURST = 130


def clicks() -> list[dict]:
    out = []
    for i, (user, (device, country, steps, _)) in enumerate(USERS.items()):
        for step in range(steps):
            out.append({"user_id": user, "event_type": FUNNEL[step], "event_id": f"{user}-e{step}",
                        "timestamp": f"{DAY}T10:{i * 5 + step:02d}:00Z", "device": device, "country": country,
                        "product_id": "P1" if step else None, "ip": f"10.0.0.{i}"})
    for n in range(BURST):
        out.append({"user_id": "bot", "event_type": "page_view", "event_id": f"bot-b{n}",
                    "timestamp": f"{DAY}T11:00:{n * 0.4:06.3f}Z", "device": "web", "country": "US"})
    return out


def transactions() -> list[dict]:
    out = []
    for i, (user, (_, country, _, payments)) in enumerate(USERS.items()):
        for j, (amount, status) in enumerate(payments):
            out.append({"transaction_id": f"t-{user}-{j}", "user_id": user, "order_id": f"o-{user}-{j}",
                        "amount": amount, "currency": "USD", "status": status, "payment_method": "card",
                        "card_fingerprint": f"fp-{user}", "ip": f"10.0.0.{i}", "country": country,
                        "timestamp": f"{DAY}T10:{i * 5 + 4:02d}:30Z"})
    return out


def tickets() -> list[dict]:
    return [{"ticket_id": "k-1", "user_id": "b1", "channel": "chat", "category": "delivery", "priority": "low",
             "status": "open", "created_at": f"{DAY}T12:00:00Z"}]


def products() -> list[bytes]:
    return [b'{"product_id": "P1", "name": "Lamp", "category": "home", "price": 30.0, "updated_at": "2026-10-01T00:00:00Z"}',
            b'{"product_id": "P2", "name": "Book", "category": "books", "price": 12.5, "updated_at": "2026-10-01T00:00:00Z"}']


def publish_all(client, settings) -> None:
    catalog.load(client, products(), settings)
    publish(client, clicks() + [b"not json at all"], settings)
    publish(client, transactions(), settings, TX)
    publish(client, tickets(), settings, SUPPORT)


# -- the lake tests' readers ---------------------------------------------------------------------

def stream_entries(client, settings) -> Counter:
    """(stream, entry id) of every entry retained in the archived streams."""
    from shopstream.engine.lake import tables
    out = Counter()
    for source in tables.sources(Keys(settings.namespace, settings.partitions)):
        for entry_id, _ in client.xrange(source.stream):
            out[(source.stream, entry_id.decode())] += 1
    return out


def lake_entries(lake) -> Counter:
    """(stream, entry id) of every row of every lake table."""
    from shopstream.engine.lake import tables
    out = Counter()
    for table in tables.TABLES:
        data = lake.read(table)
        out.update(zip(data.column("stream").to_pylist(), data.column("entry_id").to_pylist()))
    return out


async def run_engine(backend, settings) -> None:
    """Publish this input (all four streams and the catalog), consume it, flush."""
    await control.ensure_groups(backend.aio, settings)
    publish_all(backend.sync, settings)
    await consume_all(backend, settings)
    await control.flush(backend.aio, settings)


def traces(folder: Path, needle: str) -> list[str]:
    """Where ``needle`` occurs: every value of every Parquet file (decoded), every Delta log line."""
    import pyarrow.parquet as pq
    found = []

    def walk(value, where):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k, where)
                walk(v, where)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, where)
        elif isinstance(value, (str, bytes)) and needle in (value if isinstance(value, str) else value.decode("latin-1")):
            found.append(where)
    for path in sorted(folder.rglob("*.parquet")):
        walk(pq.read_table(path).to_pylist(), str(path))
    for path in sorted(folder.rglob("_delta_log/*.json")):
        if needle in path.read_text():
            found.append(str(path))
    return found

"""A small known input for the lake tests: what each user did, so query results can be asserted.

Day 2026-11-02 (UTC).  Users and what they do:
  a1  ios, FR:     view -> product_view -> add_to_cart -> checkout -> purchase; pays 30.00 (completed)
  a2  web, FR:     view -> product_view -> add_to_cart; one failed payment of 12.50
  b1  android, US: view -> product_view -> add_to_cart -> checkout -> purchase; pays 99.99; a ticket
  b2  web, US:     view only
  bot web, US:     a view at 10:20, then 130 page views in one minute at 11:00 (two sessions; the
                   events_per_minute alert); one payment of 5.00
plus a catalog of two products and one record that is not JSON (a dead letter).
"""

from __future__ import annotations

from shopstream.engine import catalog
from shopstream.engine.keys import SUPPORT, TX
from shopstream.engine.producer import publish

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

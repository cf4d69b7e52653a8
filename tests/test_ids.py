"""Ids are data, kept byte-exact: a number where an id is expected is bad input, never merged
with the string of its digits (user 15 and user "15" would otherwise share state and profile)."""

from __future__ import annotations

import msgspec
import pytest

from shopstream.engine.eventtime import format_us
from shopstream.engine.keys import SUPPORT, TX
from shopstream.engine.producer import publish
from shopstream.engine.schema import BadRecord, parse_click, parse_ticket, parse_transaction

from .helpers import event, run_events

T0 = 1_793_520_000_000_000
NOW, DAY = T0 + 3_600_000_000, 86_400_000_000
TX_ROW = {"transaction_id": "t1", "user_id": "15", "amount": "9.99", "status": "failed", "card_fingerprint": "fp",
          "timestamp": format_us(T0)}
TICKET = {"ticket_id": "k1", "user_id": "15", "status": "open", "created_at": format_us(T0)}


@pytest.mark.parametrize("parse, record, field", [
    (parse_click, {"user_id": 15, "event_type": "page_view", "timestamp": format_us(T0)}, "user_id"),
    (parse_click, {"user_id": "15", "event_type": "page_view", "timestamp": format_us(T0), "event_id": 7},
     "event_id"),
    (parse_transaction, {**TX_ROW, "user_id": 15}, "user_id"),
    (parse_transaction, {**TX_ROW, "transaction_id": 1}, "transaction_id"),
    (parse_transaction, {**TX_ROW, "card_fingerprint": 4242}, "card_fingerprint"),
    (parse_ticket, {**TICKET, "ticket_id": 7}, "ticket_id"),
    (parse_ticket, {**TICKET, "user_id": 15}, "user_id"),
])
def test_a_number_where_an_id_is_expected_is_rejected_with_a_readable_reason(parse, record, field):
    with pytest.raises(BadRecord) as exc:
        parse(msgspec.json.encode(record), NOW, DAY, 256)
    assert str(exc.value).endswith(f'at `$.{field}` (ids are strings, kept byte-exact: send "15", not 15)')


async def test_user_15_and_user_string_15_are_not_merged(backend, settings):
    clicks = [b'{"user_id": 15, "event_type": "page_view", "timestamp": "%s"}' % format_us(T0).encode(),
              event("15", T0 + 1_000_000)]
    publish(backend.sync, [{**TX_ROW, "user_id": 15}, TX_ROW], settings, TX)
    publish(backend.sync, [{**TICKET, "ticket_id": 7}, {**TICKET, "ticket_id": "7"}], settings, SUPPORT)
    out = await run_events(backend, settings, clicks)
    assert [(s["user_id"], s["event_count"]) for s in out.sessions] == [("15", 1)]
    (profile,) = out.profiles
    assert (profile["user_id"], profile["events"], profile["failed_payments"], profile["tickets"]) == ("15", 1, 1, 1)
    reasons = sorted(d["reason"] for d in out.dlq)
    assert len(reasons) == 3 and all("ids are strings" in r for r in reasons), reasons

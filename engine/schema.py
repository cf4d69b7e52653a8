"""Input schemas (msgspec) and validation of one raw record into what the engine applies.

Evolution rules (DESIGN §2): new fields are optional with defaults; unknown fields are
ignored; unknown ``event_type`` values are processed; a breaking change gets a new
``schema_version`` with its own decoder, and every version in ``_DECODERS`` is accepted.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from hashlib import blake2b
from typing import Any, NamedTuple

import msgspec

from .eventtime import BadTimestamp, parse_timestamp
from .eventtime import _second_cache as second_cache, _second_us as second_us

MAX_TYPE_LEN = 128


# Ids are data, kept byte-exact: user ids name keys, event / transaction / ticket ids decide what is
# a retry or the same ticket, so 15 and "15" would be merged if numbers were turned into text.  A
# number where an id is expected is bad input (dead-letter reason: "... ids are strings ...").
# Product ids stay lenient: they only join the catalog, whose ids are read the same way.
ID_FIELDS = ("user_id", "event_id", "transaction_id", "ticket_id", "card_fingerprint")


class ClickEventV1(msgspec.Struct, kw_only=True, frozen=True):
    user_id: str
    event_type: str
    timestamp: str | int | float  # ISO-8601 (offset, Z or naive = UTC) or epoch time (see eventtime)
    schema_version: int = 1
    event_id: str | None = None
    session_id: str | int | None = None   # the app's own session id; sessions are recomputed
    device: str | None = None
    page_url: str | None = None
    product_id: str | int | None = None
    ip: str | None = None
    user_agent: str | None = None
    country: str | None = None
    properties: dict[str, Any] | None = None


class _Version(msgspec.Struct):
    schema_version: int = 1


class BadRecord(ValueError):
    """A record that cannot be applied; ``str(exc)`` is the DLQ reason."""


def _reason(exc: msgspec.ValidationError) -> str:
    """msgspec's message, plus why when a number stands where an id is expected."""
    text = str(exc)
    if text.startswith("Expected `str") and any(text.endswith(f"at `$.{f}`") for f in ID_FIELDS):
        text += ' (ids are strings, kept byte-exact: send "15", not 15)'
    return text


class Click(NamedTuple):
    """What the apply script needs of a valid click event."""

    user_id: str
    ts_us: int
    event_type: str
    event_id: str | None
    product_id: str           # "" when none (as for the other optional fields)
    category: str             # properties.category as sent; the catalog's category wins (consumer)
    device: str
    country: str
    ip: str
    agent: str = ""           # the device's identity: a short hash of device + user_agent ("" without either)
    flags: int = 0            # INTENT | FAILED_LOGIN | AUTOMATION (flags_of)


# A click whose entry point says the customer arrived ready to buy: a push / e-mail / SMS deep link,
# "buy again" from order history, a saved cart or wish list.  The inhuman-speed rule does not apply
# to such visits (a 7 s Apple Pay checkout after a push is a feature of the app, not a bot).
INTENT_ENTRIES = frozenset(("push", "email", "sms", "notification", "deeplink", "deep_link", "order_history",
                            "reorder", "buy_again", "wishlist", "saved_cart", "cart_reminder"))
INTENT_URL_PARTS = ("/orders", "reorder", "buy-again", "buy_again", "utm_source=push", "utm_medium=push",
                    "utm_source=email", "utm_medium=email", "/wishlist", "/saved")
INTENT_TYPES = frozenset(("reorder", "buy_again"))


INTENT, FAILED_LOGIN, AUTOMATION = 1, 2, 4
FAILED_LOGIN_TYPES = frozenset(("login_failed", "login_failure", "failed_login"))
FAILED_RESULTS = frozenset(("failed", "failure", "fail", "denied", "invalid", "error", "false"))
# User agents of automation tools and HTTP libraries (no browser sends these): scripts, scrapers,
# headless browsers driven by a program.
AUTOMATION_AGENTS = ("headlesschrome", "phantomjs", "python-requests", "python-urllib", "aiohttp", "okhttp",
                     "go-http-client", "curl/", "wget/", "scrapy", "selenium", "puppeteer", "playwright",
                     "httpclient", "java/", "libwww-perl", "node-fetch", "axios/")


# one search of the lower-cased text for any of the parts (what `any(part in text ...)` says, in C)
_INTENT_URL = re.compile("|".join(map(re.escape, INTENT_URL_PARTS)))
_AUTOMATION_AGENT = re.compile("|".join(map(re.escape, AUTOMATION_AGENTS)))


def flags_of(event_type: str, page_url: str | None, properties: dict | None, user_agent: str | None) -> int:
    """What a click says about its context, for the rules: INTENT (the customer arrived ready to
    buy: INTENT_*), FAILED_LOGIN (a login that did not succeed: the event type, or properties.result /
    status / success), AUTOMATION (the user agent of a script or a headless browser)."""
    flags = 0
    props = properties or {}
    entry = props.get("entry_point") or props.get("referrer")
    if event_type in INTENT_TYPES or (isinstance(entry, str) and entry.lower() in INTENT_ENTRIES) \
            or (page_url and _INTENT_URL.search(page_url.lower())):
        flags |= INTENT
    if event_type in FAILED_LOGIN_TYPES:
        flags |= FAILED_LOGIN
    elif event_type == "login":
        result = props.get("result", props.get("status", props.get("success")))
        if result is False or (isinstance(result, str) and result.lower() in FAILED_RESULTS):
            flags |= FAILED_LOGIN
    if user_agent and _AUTOMATION_AGENT.search(user_agent.lower()):
        flags |= AUTOMATION
    return flags


@lru_cache(maxsize=8192)       # few distinct (device, user agent) pairs: hashed once each
def agent_of(device: str, user_agent: str | None) -> str:
    """A device's identity for the rules (new device): 8 hex digits of BLAKE2b of device and user agent."""
    if not user_agent and not device:
        return ""
    return blake2b(f"{device}\x00{user_agent or ''}".encode(), digest_size=4).hexdigest()


_version_decoder = msgspec.json.Decoder(_Version)
_DECODERS = {1: msgspec.json.Decoder(ClickEventV1)}
def _decode(raw: bytes) -> ClickEventV1:
    try:
        return _DECODERS[1].decode(raw)
    except msgspec.ValidationError as first:
        try:
            version = _version_decoder.decode(raw).schema_version
        except msgspec.DecodeError:
            raise BadRecord(f"invalid event: {_reason(first)}") from None
        if version in _DECODERS and version != 1:
            try:
                return _DECODERS[version].decode(raw)
            except msgspec.ValidationError as exc:
                raise BadRecord(f"invalid v{version} event: {_reason(exc)}") from None
        raise BadRecord(f"invalid event: {_reason(first)}") from None
    except msgspec.DecodeError as exc:
        raise BadRecord(f"not valid JSON: {exc}") from None


_decode_v1 = _DECODERS[1].decode
_new_tuple = tuple.__new__          # Click(...) through its Python __new__ took a third of parse_click
_UNSEEN = object()


def parse_click(raw: bytes, now_us: int, max_future_us: int, max_id_bytes: int) -> Click:
    """Validate one raw record. Raises BadRecord with a reason a person can read."""
    try:
        ev = _decode_v1(raw)             # the usual case without a call more; a failure: _decode's reason
    except msgspec.DecodeError:
        ev = _decode(raw)
    if ev.schema_version not in _DECODERS:
        raise BadRecord(f"unsupported schema_version {ev.schema_version} (supported: {sorted(_DECODERS)})")
    user_id = ev.user_id
    if not user_id:
        raise BadRecord("user_id is empty - at `$.user_id`")
    if len(user_id) * 4 > max_id_bytes and len(user_id.encode("utf-8")) > max_id_bytes:
        raise BadRecord(f"user_id is longer than {max_id_bytes} bytes - at `$.user_id`")
    if not ev.event_type:
        raise BadRecord("event_type is empty - at `$.event_type`")
    if len(ev.event_type) > MAX_TYPE_LEN:
        raise BadRecord(f"event_type is longer than {MAX_TYPE_LEN} characters - at `$.event_type`")
    ts = ev.timestamp
    base = None
    if ts.__class__ is str and len(ts) == 24 and ts[19] == "." and ts[23] == "Z":   # parse_timestamp's fast path
        frac = ts[20:23]
        if frac.isascii() and frac.isdigit():
            base = second_cache.get(ts[:19], _UNSEEN)
            if base is _UNSEEN:
                base = second_us(ts[:19])
    if base is not None:
        ts_us = base + int(frac) * 1000
    else:
        try:
            ts_us = parse_timestamp(ts)
        except BadTimestamp as exc:
            raise BadRecord(f"{exc} - at `$.timestamp`") from None
    if ts_us > now_us + max_future_us:
        raise BadRecord(
            f"timestamp {ev.timestamp!r} is more than {max_future_us // 3_600_000_000} h ahead of the wall clock"
            " - at `$.timestamp`")
    properties = ev.properties
    hint = properties.get("category") if properties else None
    # the optional text fields: a short str as it is (the usual case), anything else through _text
    product, device, country, ip = ev.product_id, ev.device, ev.country, ev.ip
    device = device if device.__class__ is str and len(device) <= MAX_FIELD_LEN else _text(device, "device")
    return _new_tuple(Click, (user_id, ts_us, ev.event_type, ev.event_id,
                 product if product.__class__ is str and len(product) <= MAX_FIELD_LEN else _text(product, "product_id"),
                 hint if isinstance(hint, str) and len(hint) <= MAX_FIELD_LEN else "",
                 device,
                 (country if country.__class__ is str and len(country) <= MAX_FIELD_LEN
                  else _text(country, "country")).upper(),
                 ip if ip.__class__ is str and len(ip) <= MAX_FIELD_LEN else _text(ip, "ip"),
                 agent_of(device, ev.user_agent), flags_of(ev.event_type, ev.page_url, properties, ev.user_agent)))


class Routing(msgspec.Struct):
    """The producer only needs the user id to pick a partition."""

    user_id: str | int


routing_decoder = msgspec.json.Decoder(Routing)


# -- transactions, support tickets, catalog ---------------------------------------------------
MINOR_DIGITS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "TND": 3}
TX_STATUSES = ("completed", "failed")
MAX_FIELD_LEN = 256


class TransactionV1(msgspec.Struct, kw_only=True, frozen=True):
    transaction_id: str
    user_id: str
    amount: str | int | float        # major units as written by the payment system ("330.98")
    status: str                      # completed | failed (others are bad input)
    timestamp: str | int | float
    schema_version: int = 1
    currency: str = "USD"
    order_id: str | int | None = None
    payment_method: str | None = None
    card_fingerprint: str | None = None
    ip: str | None = None
    country: str | None = None


class TicketV1(msgspec.Struct, kw_only=True, frozen=True):
    ticket_id: str
    user_id: str
    status: str                      # open | resolved | closed | ...: the ticket's state at created_at/updated_at
    created_at: str | int | float
    schema_version: int = 1
    updated_at: str | int | float | None = None
    channel: str | None = None
    category: str | None = None
    priority: str | None = None
    resolved_at: str | int | float | None = None


class ProductV1(msgspec.Struct, kw_only=True, frozen=True):
    product_id: str | int
    category: str
    schema_version: int = 1
    name: str | None = None
    price: str | int | float | None = None
    stock: int | None = None
    updated_at: str | int | float | None = None


class Transaction(NamedTuple):
    user_id: str
    ts_us: int
    transaction_id: str
    completed: bool
    amount_minor: int
    currency: str
    card: str
    ip: str
    country: str
    method: str = ""          # payment_method, lower case (card, apple_pay, paypal, ...)


class Ticket(NamedTuple):
    user_id: str
    ts_us: int
    ticket_id: str
    open: bool
    category: str = ""        # lower case (password_reset, refund, ...): the rules read it


def _text(value: str | int | None, field: str, required: bool = False) -> str:
    text = "" if value is None else (value if isinstance(value, str) else str(value))
    if required and not text:
        raise BadRecord(f"{field} is empty - at `$.{field}`")
    if len(text) > MAX_FIELD_LEN:
        raise BadRecord(f"{field} is longer than {MAX_FIELD_LEN} characters - at `$.{field}`")
    return text


def _user(user_id: str, max_id_bytes: int) -> str:
    if not user_id:
        raise BadRecord("user_id is empty - at `$.user_id`")
    if len(user_id) * 4 > max_id_bytes and len(user_id.encode("utf-8")) > max_id_bytes:
        raise BadRecord(f"user_id is longer than {max_id_bytes} bytes - at `$.user_id`")
    return user_id


def _time(value, field: str, now_us: int, max_future_us: int) -> int:
    try:
        ts_us = parse_timestamp(value)
    except BadTimestamp as exc:
        raise BadRecord(f"{exc} - at `$.{field}`") from None
    if ts_us > now_us + max_future_us:
        raise BadRecord(f"{field} {value!r} is more than {max_future_us // 3_600_000_000} h ahead of the wall clock"
                        f" - at `$.{field}`")
    return ts_us


def minor_units(amount: str | int | float, currency: str) -> int:
    """An amount in major units ("330.98", 330.98, 12) as an exact integer of minor units (33098)."""
    digits = MINOR_DIGITS.get(currency, 2)
    try:
        value = Decimal(amount if isinstance(amount, str) else repr(amount)).scaleb(digits)
    except InvalidOperation:
        raise BadRecord(f"amount {amount!r} is not a number - at `$.amount`") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise BadRecord(f"amount {amount!r} has more than {digits} decimals for {currency} - at `$.amount`")
    if value < 0 or value >= 10**15:
        raise BadRecord(f"amount {amount!r} is out of range - at `$.amount`")
    return int(value)


def _decode_as(decoder: msgspec.json.Decoder, raw: bytes, what: str):
    try:
        record = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRecord(f"invalid {what}: {_reason(exc)}") from None
    except msgspec.DecodeError as exc:
        raise BadRecord(f"not valid JSON: {exc}") from None
    if record.schema_version != 1:
        raise BadRecord(f"unsupported schema_version {record.schema_version} (supported: [1])")
    return record


_tx_decoder = msgspec.json.Decoder(TransactionV1)
_ticket_decoder = msgspec.json.Decoder(TicketV1)
_product_decoder = msgspec.json.Decoder(ProductV1)


def parse_transaction(raw: bytes, now_us: int, max_future_us: int, max_id_bytes: int) -> Transaction:
    tx = _decode_as(_tx_decoder, raw, "transaction")
    status = tx.status.lower()
    if status not in TX_STATUSES:
        raise BadRecord(f"status {tx.status!r} is not one of {', '.join(TX_STATUSES)} - at `$.status`")
    currency = _text(tx.currency, "currency", required=True).upper()
    if len(currency) != 3 or not currency.isalpha():
        raise BadRecord(f"currency {tx.currency!r} is not an ISO-4217 code - at `$.currency`")
    return Transaction(_user(tx.user_id, max_id_bytes), _time(tx.timestamp, "timestamp", now_us, max_future_us),
                       _text(tx.transaction_id, "transaction_id", required=True), status == "completed",
                       minor_units(tx.amount, currency), currency, _text(tx.card_fingerprint, "card_fingerprint"),
                       _text(tx.ip, "ip"), _text(tx.country, "country").upper(),
                       _text(tx.payment_method, "payment_method").lower())


def parse_ticket(raw: bytes, now_us: int, max_future_us: int, max_id_bytes: int) -> Ticket:
    t = _decode_as(_ticket_decoder, raw, "support ticket")
    when, field = (t.updated_at, "updated_at") if t.updated_at is not None else (t.created_at, "created_at")
    return Ticket(_user(t.user_id, max_id_bytes), _time(when, field, now_us, max_future_us),
                  _text(t.ticket_id, "ticket_id", required=True), t.status.lower() == "open",
                  _text(t.category, "category").lower())


def parse_product(raw: bytes) -> ProductV1:
    product = _decode_as(_product_decoder, raw, "product")
    _text(product.product_id, "product_id", required=True)
    _text(product.category, "category", required=True)
    return product

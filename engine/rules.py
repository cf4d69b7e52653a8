"""Fraud rules configuration: thresholds, windows and severities, from a TOML file.

The rules themselves run inside the apply script (lua/includes/rules.lua), atomically with the
state they read; this module only validates their parameters and hands them over as one JSON
argument, so a changed file takes effect at the next batch without a restart and without
reloading a script (``RulesFile.current()`` re-reads the file when its modification time
changes; an invalid file is reported and the last good rules stay in force).

Every rule emits at most one alert per subject and window, with its evidence and a severity;
see docs/rules.md for what each one means exactly and ops/rules.toml for the defaults.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
from typing import Annotated, Literal

import msgspec

log = logging.getLogger("shopstream.rules")

Severity = Literal["low", "medium", "high"]
Minutes = Annotated[int, msgspec.Meta(ge=1)]      # a window or half-life: event times are divided by it


class _Rule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True


Points = Annotated[float, msgspec.Meta(ge=0)]


class Horizon(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One sliding window of a velocity rule: `count` or more within the last `minutes` scores `points`."""
    minutes: Minutes
    count: Annotated[int, msgspec.Meta(ge=1)]
    points: Points


class EventsPerMinute(_Rule):
    threshold: int = 100            # fires when a user's clicks in one UTC minute exceed this (once per minute)
    severity: Severity = "medium"
    points: Points = 80


class Burst(_Rule):
    threshold: int = 100            # fires when the user's clicks in the last 60 s (exact, per second) exceed this
    severity: Severity = "medium"
    points: Points = 80


class ScriptedClicks(_Rule):
    min_gaps: int = 120             # a session's in-order gaps between clicks before the rule looks ...
    max_cv: float = 0.2             # ... at their regularity: standard deviation / mean below this (people: ~1)
    max_mean_s: float = 20.0        # ... and a mean gap under this many seconds
    severity: Severity = "medium"
    points: Points = 60


class FailedPayments(_Rule):
    horizons: tuple[Horizon, ...] = (Horizon(minutes=10, count=3, points=30), Horizon(minutes=60, count=5, points=60),
                               Horizon(minutes=1440, count=8, points=60))
    recover_below: int = 5         # a completed payment retracts the signals raised on fewer failures than this
    severity: Severity = "high"


class CardTesting(_Rule):
    cards_per_user: tuple[Horizon, ...] = (Horizon(minutes=60, count=3, points=60), Horizon(minutes=1440, count=4, points=60))
    users_per_card: tuple[Horizon, ...] = (Horizon(minutes=1440, count=3, points=40),)
    household: int = 5              # up to this many users of one card, all from one network: a family
    severity: Severity = "high"


class IpUsers(_Rule):
    horizons: tuple[Horizon, ...] = (Horizon(minutes=60, count=11, points=40), Horizon(minutes=1440, count=30, points=40))
    severity: Severity = "medium"


class CredentialStuffing(_Rule):
    """Distinct users with a failed login from one IP (not in lists.shared_ip_ranges); the same from
    one device identity (device + user agent), and from one IPv4 /24 (not in the shared ranges), so
    that rotating proxy IPs does not reset the count."""
    horizons: tuple[Horizon, ...] = (Horizon(minutes=60, count=5, points=50),)
    per_device: tuple[Horizon, ...] = (Horizon(minutes=60, count=10, points=50),)
    per_range: tuple[Horizon, ...] = (Horizon(minutes=60, count=8, points=50),)
    severity: Severity = "high"


class CardRing(_Rule):
    """Distinct users of one IPv4 /24 (not in lists.shared_ip_ranges) who each paid with a card new
    to them while holding `cards` or more distinct cards lately (the card rule's longest horizon,
    at least 24 h): a ring cycling stolen cards through several accounts behind one proxy range."""
    cards: Annotated[int, msgspec.Meta(ge=2)] = 2
    horizons: tuple[Horizon, ...] = (Horizon(minutes=1440, count=3, points=30),)
    severity: Severity = "high"


class Automation(_Rule):
    points: Points = 50             # a click whose user agent is a script's or a headless browser's
    severity: Severity = "medium"


class InhumanSpeed(_Rule):
    purchase_within_s: int = 10     # a purchase less than this after the session's first event ...
    points: Points = 40
    checkout_without_view: bool = True   # a checkout before any product_view or add_to_cart of the session
    no_product_points: Points = 40
    severity: Severity = "medium"


class AccountTakeover(_Rule):
    """Scored on a completed payment of an account older than history_days: what changed in the
    last recent_hours (device, country, account details by a support ticket) and the value."""
    history_days: float = 7.0
    recent_hours: float = 24.0
    new_device_points: Points = 15
    new_country_points: Points = 20
    new_network_points: Points = 10  # a payment from an IPv4 /16 the customer never paid nor browsed from
                                     # (in the same country: a new country is the one move, not both)
    device_and_country_points: Points = 15  # a new device AND a new country: nothing familiar is left
    stored_value_points: Points = 25  # a payment from a stored balance (points, store credit) lately
    stored_value_methods: tuple[str, ...] = ("loyalty_points", "points", "store_credit", "gift_card", "gift_card_balance",
                                             "account_balance")
    account_change_points: Points = 25
    more_changes_points: Points = 15  # a second kind of account change (e.g. password, then e-mail)
    high_value_points: Points = 25
    order_burst_points: Points = 15  # three orders or more in the recent hours (a split cash-out)
    high_value_ratio: float = 3.0   # the last recent_hours' spend against the customer's average order ...
    min_amount_minor: int = 20_000  # ... and at least this (minor units: 200.00)
    account_change_categories: tuple[str, ...] = ("password_reset", "email_change", "address_change", "phone_change",
                                            "account_access", "account_recovery", "login_issue", "2fa_reset",
                                            "account")
    severity: Severity = "high"


class AddressAfterOrder(_Rule):
    """A ticket changing the delivery address within `hours` after a completed order (one of the
    account-takeover change categories below)."""
    hours: float = 24.0
    categories: tuple[str, ...] = ("address_change", "shipping_address", "delivery_address")
    points: Points = 30
    severity: Severity = "medium"


class ImpossibleTravel(_Rule):
    max_kmh: float = 900.0          # faster than an airliner between two countries' centres ...
    min_km: float = 1000.0          # ... that are at least this far apart (a centre is not a border)
    points: Points = 40
    severity: Severity = "medium"


class RefundAbuse(_Rule):
    count: int = 3                  # refund-type tickets of one customer (profile lifetime) ...
    ratio: float = 0.5              # ... and at least this many per completed order
    points: Points = 50
    categories: tuple[str, ...] = ("refund", "return", "item_not_received", "not_received", "damaged_item",
                             "chargeback", "wrong_item", "missing_item")
    severity: Severity = "medium"


class NewAccount(_Rule):
    hours: float = 24.0             # an account first seen less than this ago ...
    points: Points = 25             # ... adds this once a day when it raises any other signal
    severity: Severity = "low"


class Lists(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Context kept by people: IPv4 ranges (CIDR) known to be shared (carrier NAT, corporate egress:
    the IP velocity rules ignore them) or blocked, and blocked cards."""
    shared_ip_ranges: tuple[str, ...] = ()
    block_ip_ranges: tuple[str, ...] = ()
    block_cards: tuple[str, ...] = ()
    block_points: Points = 100


class Score(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    half_life_minutes: Minutes = 60  # a signal's points halve every half-life (event time)
    step_up: float = 30.0            # actions by score: allow below step_up, then step_up, review, block
    review: float = 50.0
    block: float = 80.0


def _ranges(cidrs: tuple[str, ...]) -> list[list[int]]:
    """IPv4 CIDRs as [first, last] integer pairs (ValueError names a bad one)."""
    out = []
    for text in cidrs:
        try:
            net = ipaddress.IPv4Network(text, strict=False)
        except ValueError as exc:
            raise ValueError(f"invalid rules: lists: {exc}") from None
        out.append([int(net.network_address), int(net.broadcast_address)])
    return out


def _horizons(rule: _Rule, horizons: tuple[Horizon, ...]) -> list | bool:
    min_us = 60_000_000
    return rule.enabled and bool(horizons) and [[h.minutes * min_us, h.count, h.points] for h in horizons]


class Rules(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    events_per_minute: EventsPerMinute = EventsPerMinute()
    burst: Burst = Burst()
    scripted_clicks: ScriptedClicks = ScriptedClicks()
    failed_payments: FailedPayments = FailedPayments()
    card_testing: CardTesting = CardTesting()
    ip_users: IpUsers = IpUsers()
    credential_stuffing: CredentialStuffing = CredentialStuffing()
    card_ring: CardRing = CardRing()
    automation: Automation = Automation()
    inhuman_speed: InhumanSpeed = InhumanSpeed()
    account_takeover: AccountTakeover = AccountTakeover()
    impossible_travel: ImpossibleTravel = ImpossibleTravel()
    address_after_order: AddressAfterOrder = AddressAfterOrder()
    refund_abuse: RefundAbuse = RefundAbuse()
    new_account: NewAccount = NewAccount()
    lists: Lists = Lists()
    score: Score = Score()

    def __post_init__(self):
        _ranges(self.lists.shared_ip_ranges + self.lists.block_ip_ranges)
        if not self.score.step_up <= self.score.review <= self.score.block:
            raise ValueError("invalid rules: score: step_up <= review <= block")

    def to_lua(self) -> bytes:
        """The apply script's rules argument: thresholds in the units the script uses (µs)."""
        min_us, hour_us = 60_000_000, 3_600_000_000
        fp, ct, ip = self.failed_payments, self.card_testing, self.ip_users
        sp, ato, tr = self.inhuman_speed, self.account_takeover, self.impossible_travel
        ra, sc, na = self.refund_abuse, self.scripted_clicks, self.new_account
        return msgspec.json.encode({
            "epm": self.events_per_minute.enabled and self.events_per_minute.threshold,
            "epm_sev": self.events_per_minute.severity,
            "burst": self.burst.enabled and self.burst.threshold,
            "burst_sev": self.burst.severity,
            "script": sc.enabled and [sc.min_gaps, sc.max_cv, sc.max_mean_s * 1_000_000],
            "script_sev": sc.severity,
            "fail_h": _horizons(fp, fp.horizons),
            "fail_recover": fp.recover_below,
            "fail_sev": fp.severity,
            "cards_h": _horizons(ct, ct.cards_per_user),
            "cardu_h": _horizons(ct, ct.users_per_card),
            "card_sev": ct.severity,
            "household": ct.household,
            "ip_h": _horizons(ip, ip.horizons),
            "ip_sev": ip.severity,
            "stuff_h": _horizons(self.credential_stuffing, self.credential_stuffing.horizons),
            "stuff_dev_h": _horizons(self.credential_stuffing, self.credential_stuffing.per_device),
            "stuff_net_h": _horizons(self.credential_stuffing, self.credential_stuffing.per_range),
            "stuff_sev": self.credential_stuffing.severity,
            "ring_h": _horizons(self.card_ring, self.card_ring.horizons),
            "ring_cards": self.card_ring.cards,
            "ring_sev": self.card_ring.severity,
            "auto_sev": self.automation.severity,
            "speed_us": sp.enabled and sp.purchase_within_s * 1_000_000,
            "speed_noview": sp.enabled and sp.checkout_without_view,
            "speed_sev": sp.severity,
            "ato": ato.enabled and {"hist": int(ato.history_days * 24 * hour_us), "recent": int(ato.recent_hours * hour_us),
                                    "ratio": ato.high_value_ratio, "min": ato.min_amount_minor,
                                    "changes": {c: True for c in ato.account_change_categories},
                                    "stored": {m: True for m in ato.stored_value_methods}},
            "ato_sev": ato.severity,
            "travel": tr.enabled and [tr.max_kmh, tr.min_km],
            "redirect": self.address_after_order.enabled and {
                "within": int(self.address_after_order.hours * hour_us),
                "cats": {c: True for c in self.address_after_order.categories}},
            "redirect_sev": self.address_after_order.severity,
            "travel_sev": tr.severity,
            "refund": ra.enabled and [ra.count, ra.ratio],
            "refund_cats": {c: True for c in ra.categories},
            "refund_sev": ra.severity,
            "new_acct": na.enabled and int(na.hours * hour_us),
            "shared_ips": _ranges(self.lists.shared_ip_ranges),
            "block_ips": _ranges(self.lists.block_ip_ranges),
            "block_cards": {c: True for c in self.lists.block_cards},
            "pts": {"events_per_minute": self.events_per_minute.points, "burst": self.burst.points,
                    "scripted_clicks": sc.points, "inhuman_speed": sp.points, "no_product": sp.no_product_points,
                    "new_device": ato.new_device_points, "new_country": ato.new_country_points,
                    "new_network": ato.new_network_points, "account_change": ato.account_change_points,
                    "more_changes": ato.more_changes_points, "high_value": ato.high_value_points,
                    "device_and_country": ato.device_and_country_points, "stored_value": ato.stored_value_points,
                    "order_burst": ato.order_burst_points,
                    "automation": self.automation.enabled and self.automation.points or 0,
                    "impossible_travel": tr.points, "refund_abuse": ra.points, "new_account": na.points,
                    "address_after_order": self.address_after_order.points,
                    "blocklist": self.lists.block_points},
            "score_hl": self.score.half_life_minutes * min_us,
            "act": [self.score.step_up, self.score.review, self.score.block],
        })


def parse_rules(text: str) -> Rules:
    """Rules from TOML text; raises ValueError with the offending field."""
    try:
        return msgspec.convert(tomllib.loads(text), Rules)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, ValueError) as exc:
        if str(exc).startswith("invalid rules"):
            raise ValueError(str(exc)) from None
        raise ValueError(f"invalid rules: {exc}") from None


class RulesFile:
    """The rules of a file (defaults when there is none), re-read when the file changes."""

    def __init__(self, path: str | None):
        self.path = path
        self._mtime: float | None = None
        self.rules = Rules()
        self.lua = self.rules.to_lua()
        self.reloads = 0
        if path:
            self.rules = parse_rules(open(path, encoding="utf-8").read())   # a bad file at start is fatal
            self.lua = self.rules.to_lua()
            self._mtime = os.stat(path).st_mtime

    def current(self) -> bytes:
        """The rules argument, re-reading the file first if it changed since the last look."""
        if self.path:
            try:
                mtime = os.stat(self.path).st_mtime
                if mtime != self._mtime:
                    self._mtime = mtime
                    self.rules = parse_rules(open(self.path, encoding="utf-8").read())
                    self.lua = self.rules.to_lua()
                    self.reloads += 1
                    log.info("rules reloaded from %s", self.path)
            except (OSError, ValueError) as exc:
                log.error("rules file %s not reloaded, the previous rules stay in force: %s", self.path, exc)
        return self.lua

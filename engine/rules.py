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


class EventsPerMinute(_Rule):
    threshold: int = 100            # fires when a user's clicks in one UTC minute exceed this (once per minute)
    severity: Severity = "medium"


class Burst(_Rule):
    threshold: int = 100            # fires when the sliding-60 s estimate exceeds this
    severity: Severity = "medium"


class FailedPayments(_Rule):
    count: int = 3                  # fires on the count-th failed transaction ...
    window_minutes: Minutes = 10    # ... within any window of this length
    severity: Severity = "high"


class CardTesting(_Rule):
    cards_per_user: int = 3         # distinct cards of one user, or ...
    users_per_card: int = 3         # ... distinct users of one card, within one tumbling window
    window_minutes: Minutes = 60
    severity: Severity = "high"


class IpUsers(_Rule):
    threshold: int = 10             # fires when more than this many distinct users use one IP ...
    window_minutes: Minutes = 10    # ... within one tumbling window
    severity: Severity = "medium"


class InhumanSpeed(_Rule):
    purchase_within_s: int = 10     # a session with a purchase less than this after its first event
    checkout_without_view: bool = True   # a session with a checkout and no product_view nor add_to_cart
    severity: Severity = "medium"


class NewCountryPurchase(_Rule):
    min_amount_minor: int = 50_000  # completed transaction of at least this (minor units: 500.00)
    new_minutes: int = 30           # from a country first seen for the user less than this ago ...
    history_minutes: int = 60       # ... while the user was first seen more than this before
    severity: Severity = "high"


class Risk(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    half_life_minutes: Minutes = 60  # an alert's weight halves every half-life (event time)
    low: float = 10.0
    medium: float = 25.0
    high: float = 50.0


class Rules(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    events_per_minute: EventsPerMinute = EventsPerMinute()
    burst: Burst = Burst()
    failed_payments: FailedPayments = FailedPayments()
    card_testing: CardTesting = CardTesting()
    ip_users: IpUsers = IpUsers()
    inhuman_speed: InhumanSpeed = InhumanSpeed()
    new_country_purchase: NewCountryPurchase = NewCountryPurchase()
    risk: Risk = Risk()

    def to_lua(self) -> bytes:
        """The apply script's rules argument: thresholds in the units the script uses (µs)."""
        min_us = 60_000_000
        return msgspec.json.encode({
            "epm": self.events_per_minute.enabled and self.events_per_minute.threshold,
            "epm_sev": self.events_per_minute.severity,
            "burst": self.burst.enabled and self.burst.threshold,
            "burst_sev": self.burst.severity,
            "fail_n": self.failed_payments.enabled and self.failed_payments.count,
            "fail_w": self.failed_payments.window_minutes * min_us,
            "fail_sev": self.failed_payments.severity,
            "cards_n": self.card_testing.enabled and self.card_testing.cards_per_user,
            "cardu_n": self.card_testing.enabled and self.card_testing.users_per_card,
            "card_w": self.card_testing.window_minutes * min_us,
            "card_sev": self.card_testing.severity,
            "ip_n": self.ip_users.enabled and self.ip_users.threshold,
            "ip_w": self.ip_users.window_minutes * min_us,
            "ip_sev": self.ip_users.severity,
            "speed_us": self.inhuman_speed.enabled and self.inhuman_speed.purchase_within_s * 1_000_000,
            "speed_noview": self.inhuman_speed.enabled and self.inhuman_speed.checkout_without_view,
            "speed_sev": self.inhuman_speed.severity,
            "ncp_min": self.new_country_purchase.enabled and self.new_country_purchase.min_amount_minor,
            "ncp_new": self.new_country_purchase.new_minutes * min_us,
            "ncp_hist": self.new_country_purchase.history_minutes * min_us,
            "ncp_sev": self.new_country_purchase.severity,
            "risk_hl": self.risk.half_life_minutes * min_us,
            "risk_w": {"low": self.risk.low, "medium": self.risk.medium, "high": self.risk.high},
        })


def parse_rules(text: str) -> Rules:
    """Rules from TOML text; raises ValueError with the offending field."""
    try:
        return msgspec.convert(tomllib.loads(text), Rules)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
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

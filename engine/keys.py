"""The only place that builds key, stream and channel names.

Every per-partition key starts with ``<ns>:{<p>}:`` so that the partition's hash tag is
the *first* ``{...}`` of the key: whatever a user id contains (``{``, ``}``, ``:``, spaces,
unicode) it comes last and cannot change the key's hash slot.  Lua scripts receive the
partition prefix (``Partition.prefix``) as a key and derive per-user / per-minute keys from
it with the same suffixes as below (see lua/includes/keys.lua).
"""

from __future__ import annotations

from dataclasses import dataclass

from .contract import APPLY_KEYS

# Per-partition suffixes; the Lua scripts derive per-user / per-window keys from the partition
# prefix (KEYS[1]) with the same suffixes.
CLICKS = "clicks"        # STREAM  input: one field "e" = the raw JSON click event
TX = "tx"                # STREAM  input: one field "e" = a transaction (JSON)
SUPPORT = "support"      # STREAM  input: one field "e" = a support ticket snapshot (JSON)
REKEY = "rekey"          # STREAM  input: records forwarded from other partitions (subject rules, risk)
OUTBOX = "outbox"        # STREAM  records this partition's script wrote for other partitions
STATE = "state"          # HASH    watermark wm, the clock max and its quorum users top, counters
OPEN = "open"            # ZSET    users with open sessions, score = earliest close time (µs)
OPEN_MINUTES = "mopen"   # ZSET    minutes not yet finalized, score = minute number
SESSIONS = "sessions"    # STREAM  closed sessions
ALERTS = "alerts"        # STREAM  anomaly alerts (also PUBLISHed)
LATE = "late"            # STREAM  events behind the watermark
MINUTES = "minutes"      # STREAM  finalized per-minute metrics
PROFILES = "profiles"    # STREAM  profile changelog: one record per changed profile per script call
LEASE = "lease"          # STRING  owning consumer's name, PX lease_ttl
USER = "user:"           # STRING  user:<user_id> open sessions + per-minute counts (MessagePack)
COUNT = "count:"         # STRING  count:<minute> events in that minute
HLL = "hll:"             # HLL     hll:<minute> users in that minute
FIRED = "fired:"         # STRING  fired:<rule>:<window>:<kind>:<subject> alerted (at most once)
RISK = "risk:"           # STRING  risk:<rule>:<window>:<kind>:<len(subject)>:<subject>:<user_id> a subject
                         #         alert's risk reached the user (at most once)
TOMB = "tomb:"           # STRING  tomb:<user_id> the user was erased: drop their events (PX tombstone_ttl)
PROFILE = "profile:"     # HASH    profile:<user_id> the unified customer profile (PX profile_ttl)
TICKETS = "tickets:"     # HASH    tickets:<user_id> ticket_id -> last status
FAILS = "fails:"         # ZSET    fails:<user_id> failed transactions in the velocity window
UCARDS = "ucz:"          # ZSET    ucz:<user_id> the user's cards -> latest time used (the latest 64)
SPEND = "spend:"         # ZSET    spend:<user_id>: written by earlier versions (account takeover's recent payments,
                         #         now the profile's last_order); not written any more, erase still deletes it
UIPS = "uips:"           # SET     uips:<window>:<user_id> the first 64 IPs of the user's payments (forwarded once)
UIPS_MORE = "uipx:"      # HLL     uipx:<window>:<user_id> the IPs beyond those 64 (not forwarded)
CARD_USERS = "cuz:"      # ZSET    cuz:<card> users of a card -> latest time (the latest 64; card's partition)
IP_USERS = "ipz:"        # ZSET    ipz:<ip> users behind an IP -> latest time (the latest 64; IP's partition)
CARD_NETS = "cnz:"       # ZSET    cnz:<card> networks (IPv4 /24) a card paid from -> latest time (the latest 64)
LOGIN_IP = "lgz:"        # ZSET    lgz:<ip> users with a failed login from the IP -> latest time (the latest 64)
LOGIN_DEV = "lgdz:"      # ZSET    lgdz:<agent> users with a failed login from the device identity -> latest time
LOGIN_NET = "lgnz:"      # ZSET    lgnz:<a.b.c> users with a failed login from the IPv4 /24 -> latest time
RING_NET = "rngz:"       # ZSET    rngz:<a.b.c> users paying from the /24 with a card new to them while holding
                         #         several cards lately -> latest time (card ring; the latest 64)
USER_KEYS = "ukeys:"     # SET     ukeys:<user_id> the user's keys not named by the id alone (fired, risk,
                         #         ucards): erase deletes them (user's partition; no SCAN)
USER_SETS = "usets:"     # SET     usets:<user_id> the subject ZSETs (cuz:, ipz:, lgz:, ...) holding the user, in
                         #         this (the subject's) partition: erase removes the user from them
INPUTS = (CLICKS, TX, SUPPORT, REKEY)   # every input stream of a partition, read by its owner
# The suffixes the Lua scripts derive per-user / per-window keys with (from the partition prefix):
# generated into every script as KEY.<name> (engine/scripts.py), typed nowhere else.
DERIVED = {"user": USER, "count": COUNT, "hll": HLL, "fired": FIRED, "risk": RISK, "tomb": TOMB, "profile": PROFILE,
           "tickets": TICKETS, "fails": FAILS, "ucards": UCARDS, "uips": UIPS,
           "uips_more": UIPS_MORE, "card_users": CARD_USERS, "ip_users": IP_USERS, "login_ip": LOGIN_IP, "card_nets": CARD_NETS,
           "login_dev": LOGIN_DEV, "login_net": LOGIN_NET, "ring_net": RING_NET,
           "user_keys": USER_KEYS, "user_sets": USER_SETS}
# The partition's own keys a script may be given by name (engine/contract.py): name -> suffix.
_NAMED = {"prefix": "", **{s: s for s in (CLICKS, TX, SUPPORT, REKEY, OUTBOX, STATE, OPEN, OPEN_MINUTES, SESSIONS,
                                          ALERTS, LATE, MINUTES, LEASE, PROFILES)}}


@dataclass(frozen=True, slots=True)
class Partition:
    ns: str
    p: int

    @property
    def prefix(self) -> str:
        return f"{self.ns}:{{{self.p}}}:"

    def key(self, suffix: str) -> str:
        return self.prefix + suffix

    @property
    def clicks(self) -> str:
        return self.key(CLICKS)

    @property
    def inputs(self) -> list[str]:
        return [self.key(s) for s in INPUTS]

    def user(self, user_id: str) -> str:
        return self.key(USER) + user_id

    def count(self, minute: int) -> str:
        return f"{self.prefix}{COUNT}{minute}"

    def hll(self, minute: int) -> str:
        return f"{self.prefix}{HLL}{minute}"

    def profile(self, user_id: str) -> str:
        return self.key(PROFILE) + user_id

    def script_keys(self, names: tuple[str, ...]) -> list[str]:
        """The KEYS of a script, by the names engine/contract.py gives them."""
        return [self.key(_NAMED[name]) for name in names]

    def apply_keys(self) -> list[str]:
        """KEYS of lua/apply_batch.lua, in contract order."""
        return self.script_keys(APPLY_KEYS)


@dataclass(frozen=True, slots=True)
class Keys:
    """Names for one namespace and partition count."""

    ns: str
    partitions: int

    def partition(self, p: int) -> Partition:
        return Partition(self.ns, p)

    def all_partitions(self) -> list[Partition]:
        return [Partition(self.ns, p) for p in range(self.partitions)]

    @property
    def catalog(self) -> str:
        """STREAM of catalog updates (product JSON in field "e"); consumers follow it."""
        return f"{self.ns}:catalog"

    def product(self, product_id: str) -> str:
        """HASH of one product: name, category, price, stock, updated_at."""
        return f"{self.ns}:product:{product_id}"

    @property
    def dlq(self) -> str:
        return f"{self.ns}:dlq"

    @property
    def consumers(self) -> str:
        """ZSET of live consumers, score = heartbeat expiry (ms)."""
        return f"{self.ns}:consumers"

    @property
    def audit(self) -> str:
        """STREAM of erasures: subject_hmac (HMAC-SHA256 of the id) and what was removed (never the id)."""
        return f"{self.ns}:audit"

    @property
    def audit_key(self) -> str:
        """STRING the HMAC key of the audit records when ``audit_key`` is not set (SET NX, random)."""
        return f"{self.ns}:audit:key"

    @property
    def input_state(self) -> str:
        """STRING "open" while a producer streams a bounded input (``shopstream run``), "done" once
        all of it is appended: ``consume --until-idle`` does not stop at a drained stream while "open"."""
        return f"{self.ns}:input"

    def channel(self, name: str) -> str:
        return f"{self.ns}:{name}"

    @property
    def pattern(self) -> str:
        """SCAN MATCH pattern for everything in the namespace."""
        return f"{self.ns}:*"


_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN MATCH pattern (ids may contain * ? [ ] \\)."""
    return text.translate(_GLOB_SPECIAL)

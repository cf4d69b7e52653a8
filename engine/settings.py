"""One Settings struct; precedence: CLI flag > environment > TOML file > defaults.

Environment: ``REDIS_URL`` and ``SHOPSTREAM_<FIELD>`` (upper case), e.g.
``SHOPSTREAM_PARTITIONS=32``. TOML: the file named by ``SHOPSTREAM_CONFIG``
(or ``--config``), flat ``field = value`` pairs.  Durations are milliseconds.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Annotated, Any, Mapping

import msgspec


Positive = Annotated[int, msgspec.Meta(ge=1)]     # a setting the scripts divide or index by


class Settings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    redis_url: str | None = None          # None: start a private redis-server (run/demo)
    namespace: str = "ss"                 # first component of every key
    partitions: int = 16                  # fixed for the life of the data: partition = crc32(user_id) % partitions
    group: str = "shopstream"             # consumer group on every input stream

    session_gap_ms: int = 30 * 60_000     # G: inactivity gap that ends a session
    out_of_order_ms: int = 5 * 60_000     # B: watermark = the partition's clock - B
    watermark_quorum: Positive = 3             # the clock = the quorum-th latest of the users' latest click times
    idle_timeout_ms: int = 60_000         # live mode: an idle partition's watermark follows the wall clock (0 = off)
    max_future_ms: int = 86_400_000       # events further ahead of the wall clock are bad input
    max_id_bytes: int = 256               # longer user ids are bad input
    state_ttl_ms: int = 86_400_000        # every per-user / per-minute key expires after this much inactivity
    tombstone_ttl_ms: int = 30 * 86_400_000  # an erased user's events are dropped for this long
    audit_key: str | None = None          # HMAC key of the erasure audit (None: a random one kept at <ns>:audit:key)

    profile_ttl_ms: int = 90 * 86_400_000  # a customer profile expires after this long without activity
    rules_file: str | None = None         # TOML of rule thresholds (engine/rules.py); re-read when it changes
    alerts_channel: str = "alerts"        # pub/sub channel (namespaced: <namespace>:alerts)

    batch_size: int = 1000                # XREADGROUP COUNT per partition
    close_per_call: Positive = 100             # users / minutes one script call closes at most (bounds its length)
    block_ms: int = 100                   # XREADGROUP BLOCK when there is nothing to do
    poll_ms: int = 10                     # Redis Cluster (no multi-slot BLOCK): pause after a read that found nothing
    linger_ms: int = 40                   # under load, wait this long after a round so that batches grow ...
    linger_above_rate: int = 1_500        # ... under load = more than this many events/s per partition read
    input_maxlen: int = 2_000_000         # no effect (input is trimmed once acknowledged); kept so configs load
    input_retention_ms: int = 600_000     # acknowledged input is kept this long (replays, erase), then trimmed
    input_hard_cap: int = 5_000_000       # producer: BackPressure when an input stream holds this many (0 = off)
    wait_replicas: int = 0                # producer: a batch is published once this many replicas have it (WAIT)
    wait_timeout_ms: int = 1_000          # ... or NotReplicated after this long
    output_maxlen: int = 1_000_000        # MAXLEN ~ per output stream partition
    lease_ttl_ms: int = 5_000             # a dead consumer's partitions are free again after this
    max_deliveries: int = 5               # a batch whose script fails this often is split; failing entries -> DLQ
    heartbeat_ms: int = 1_000             # membership + lease renewal period
    metrics_port: int | None = 9108       # /metrics; 0 = any free port; None = off
    lake_uri: str = "lake"                # the lake: a folder, or s3://… / abfss://… / gs://… (engine/lake)
    archive_group: str = "archive"        # the archiver's consumer group on every input and output stream
    archive_required: bool = False        # retention: trim no stream the archiver's group does not read yet

    def replace(self, **changes: Any) -> "Settings":
        return msgspec.structs.replace(self, **{k: v for k, v in changes.items() if v is not None})


_FIELDS = {f.name: f for f in msgspec.structs.fields(Settings)}


def _shown(name: str, value: str) -> str:
    """A variable's value as an error repeats it: not a URL's, a URI's or a key's (they hold secrets)."""
    return "=..." if name.endswith(("_url", "_uri", "_key")) else f"={value!r}"


class SettingsError(msgspec.ValidationError):
    """A setting of the wrong type or range, with where it came from (variable, file, flag)."""


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge defaults, TOML, environment and explicit overrides (None values are ignored; an
    empty SHOPSTREAM_<NAME> variable counts as not set)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}           # setting -> where its value came from, for the error
    path = config_file or env.get("SHOPSTREAM_CONFIG")
    if path:
        with open(path, "rb") as fh:
            raw.update(tomllib.load(fh))
        source.update(dict.fromkeys(raw, str(path)))
    for name in _FIELDS:
        variable = f"SHOPSTREAM_{name.upper()}"
        value = env.get(variable)
        if value:
            raw[name] = value
            source[name] = f"the environment: {variable}{_shown(name, value)}"
    if env.get("REDIS_URL"):
        raw["redis_url"] = env["REDIS_URL"]
        source["redis_url"] = "the environment: REDIS_URL"
    for name, value in (overrides or {}).items():
        if value is not None:
            raw[name] = value
            source[name] = "the command line"
    # strict=False lets "32" from the environment become 32; types are still checked.
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        at = re.search(r"at `\$\.(\w+)`", str(exc))
        name = at.group(1) if at else ""
        what = f"invalid setting {name}" if name else "invalid settings"
        where = f" (from {source[name]})" if name in source else ""
        raise SettingsError(f"{what}{where}: {exc}") from None

"""The apply's floor, measured beside the engine on the same traffic (``shopstream bench``).

``lua/apply_batch.lua`` does, per event, the exactly-once guard (XACK), the user's durable state,
and then the semantics: sessions, per-minute counts and HLLs, the fraud rules, profiles.  Issue 15
asks the apply for 5 us per event.  This stage answers what part of that the design itself takes:
the same published stream is read in batches of ``batch`` entries per input stream, decoded by the
engine's own ``batch.decode_entries``, and applied by ``engine/tools/apply_floor.lua``, which
keeps only the guard and one state GET / SET per user and call.  Redis time per event (the
script's, from INFO commandstats) is the floor; the engine's minus it is what the semantics cost.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from shopstream.engine.batch import decode_entries, merge_sources
from shopstream.engine.keys import CLICKS, REKEY, SUPPORT, TX, Keys
from shopstream.engine.producer import publish_mixed
from shopstream.engine.settings import Settings

FLOOR_LUA = Path(__file__).with_name("apply_floor.lua").read_text()


def measure(client: redis.Redis, settings: Settings, sources: list[str], payloads: list[bytes],
            batch: int = 1000) -> dict:
    """Publish the stream on a fresh namespace of ``client`` (a single node), apply it with the
    floor script, and return its Redis time per event (``apply_us``) and events per call."""
    keys = Keys(settings.namespace, settings.partitions)
    parts = keys.all_partitions()
    for part in parts:
        for source in (CLICKS, TX, SUPPORT, REKEY):
            client.xgroup_create(part.key(source), settings.group, id="0", mkstream=True)
    publish_mixed(client, zip(sources, payloads), settings)
    sha = client.script_load(FLOOR_LUA)
    client.config_resetstat()
    applied = calls = 0
    started = time.perf_counter()
    for p, part in enumerate(parts):
        streams = {part.key(s): s for s in (CLICKS, TX, SUPPORT)}
        while True:
            reply = client.xreadgroup(settings.group, "floor", {k: ">" for k in streams}, count=batch)
            if not reply:
                break
            by_source = {streams[k.decode() if isinstance(k, bytes) else k]: entries for k, entries in reply}
            decoded = decode_entries(merge_sources(by_source), p, time.time_ns() // 1000, settings)
            if decoded.count:
                done, _ = client.evalsha(sha, 5, part.prefix, part.key(CLICKS), part.key(TX), part.key(SUPPORT),
                                         part.key(REKEY), settings.group, settings.state_ttl_ms, decoded.events)
                applied += done
                calls += 1
    seconds = time.perf_counter() - started
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return {"events": applied, "calls": calls, "events_per_call": applied / max(calls, 1),
            "apply_us": stats.get("usec", 0) / max(applied, 1), "seconds": seconds}

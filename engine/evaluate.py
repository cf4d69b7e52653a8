"""``shopstream evaluate DIR``: replay a scenario library through the real engine and score it.

Reads every ``*.jsonl`` of DIR (records and labels, docs/rules.md "Scenario library and
evaluation"), writes the records as the four sample sources into a temporary folder, publishes
them merged in event time, as they arrive live (``--by-source``: each source whole, one after
the other, with ``pipeline.run_file``), runs consumer processes until drained, flushes and
exports, in a namespace of its own on a private redis-server (or REDIS_URL), and scores the
export with engine/evaluation.py.
``--shadow FILE2`` runs the same input under a second rules file in a second namespace and lists
what each run raised that the other did not, per user and rule.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import msgspec

from . import aio, catalog, control, evaluation, export
from .batch import PAYLOAD_FIELD
from .connection import async_client, sync_client
from .eventtime import parse_timestamp
from .keys import CLICKS, SUPPORT, TX, Keys
from .settings import Settings

TX_COLUMNS = ["transaction_id", "user_id", "order_id", "amount", "currency", "status", "payment_method",
              "card_fingerprint", "ip", "country", "timestamp"]
SOURCES = {"click": "clickstream_events.json", "transaction": "transactions.csv",
           "ticket": "customer_support_interactions.json"}
STREAM_OF = {"click": CLICKS, "transaction": TX, "ticket": SUPPORT}
PUBLISH_PIPELINE = 1000


@dataclass
class Library:
    records: dict[str, list[dict]]        # source -> records (file order: each file's event time, files by name)
    labels: list[evaluation.Label]


def load(folder: str | Path) -> Library:
    """The scenarios of a folder; refuses a user labelled twice or a record of an unlabelled user."""
    records: dict[str, list[dict]] = {s: [] for s in SOURCES}
    labels: dict[str, evaluation.Label] = {}
    files = sorted(Path(folder).glob("*.jsonl"))
    if not files:
        raise ValueError(f"{folder}: no scenario files (*.jsonl)")
    users: set[str] = set()
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "label" in rec:
                lab = evaluation.Label.of(rec["label"])
                if lab.user_id in labels:
                    raise ValueError(f"{path.name}:{n}: user {lab.user_id} is labelled twice")
                labels[lab.user_id] = lab
                continue
            source = rec.pop("source", None)
            if source not in SOURCES:
                raise ValueError(f"{path.name}:{n}: source must be one of {sorted(SOURCES)}, not {source!r}")
            records[source].append(rec)
            users.add(rec["user_id"])
    if missing := sorted(users - set(labels)):
        raise ValueError(f"users without a label: {', '.join(missing[:10])}")
    return Library(records, list(labels.values()))


def _time_of(source: str, rec: dict) -> str:
    return rec.get("timestamp") if source != "ticket" else (rec.get("updated_at") or rec.get("created_at"))


def write_input(lib: Library, folder: Path) -> Path:
    """The library as the engine's four sources (each source in event-time order) plus the catalog."""
    folder.mkdir(parents=True, exist_ok=True)
    for source, name in SOURCES.items():
        rows = sorted(lib.records[source], key=lambda r: _time_of(source, r) or "")
        with (folder / name).open("w", newline="") as fh:
            if source == "transaction":
                writer = csv.DictWriter(fh, TX_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            else:
                fh.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
    shutil.copyfile(str(resources.files("shopstream.data").joinpath("product_catalog.json")),
                    folder / "product_catalog.json")
    return folder


def read_outputs(out: Path) -> tuple[list[dict] | None, list[dict]]:
    """(decisions or None when the export has none, alerts) of an export folder."""
    def rows(name):
        path = out / name
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else None
    return rows("decisions.jsonl"), rows("alerts.jsonl") or []


async def drain(settings: Settings, out: Path, consumers: int = 2) -> tuple[list[dict] | None, list[dict]]:
    """What is published: consumer processes until drained, flush, export to ``out``; its outputs."""
    from .pipeline import start_consumers
    codes = [p.wait() for p in start_consumers(settings.replace(idle_timeout_ms=0), consumers)]
    if any(codes):
        raise RuntimeError(f"consumer exit codes {codes}")
    client = async_client(settings.redis_url)
    try:
        await control.flush(client, settings)
        export.write(await export.collect(client, settings), out)
    finally:
        await client.aclose()
    return read_outputs(out)


def publish_in_time_order(lib: Library, input_dir: Path, settings: Settings) -> None:
    """The four sources merged by event time, as they would arrive live (a payment between the
    clicks around it), instead of one whole source after the other as ``replay`` of a folder does.
    Each record gets an entry id of its own millisecond, in that order (the last one now): the
    consumers merge a partition's streams by id, clicks first within a millisecond, so ids taken
    at arrival (a whole pipeline in one millisecond) would reorder payments and clicks, and two
    evaluations of one library would differ with the publisher's timing."""
    from .producer import read_events, route
    client = sync_client(settings.redis_url)
    try:
        catalog.load(client, list(read_events(input_dir / "product_catalog.json")), settings)
        merged = sorted(((parse_timestamp(_time_of(src, r)), n, src, r)
                         for n, (src, rs) in enumerate(lib.records.items()) for r in rs), key=lambda x: x[:2])
        parts = Keys(settings.namespace, settings.partitions).all_partitions()
        first_ms = int(time.time() * 1000) - len(merged)
        pipe = client.pipeline(transaction=False)
        for i, (*_, src, record) in enumerate(merged):
            raw = msgspec.json.encode(record)        # byte for byte what publish() writes of a dict
            pipe.xadd(parts[route(raw, settings.partitions)].key(STREAM_OF[src]), {PAYLOAD_FIELD: raw},
                      id=f"{first_ms + i}-0")
            if len(pipe) == PUBLISH_PIPELINE:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()


def run_once(input_dir: Path, out: Path, settings: Settings, rules: str | None,
             lib: Library | None = None) -> tuple[list[dict] | None, list[dict]]:
    """One engine run of the input under ``rules`` in a fresh namespace, deleted afterwards:
    ``pipeline.run_file`` on the folder, or (``lib`` given) the records merged in event time."""
    from .pipeline import run_file
    s = settings.replace(namespace=f"{settings.namespace}-eval-{uuid.uuid4().hex[:8]}",
                         rules_file=str(Path(rules).resolve()) if rules else None)
    try:
        if lib is None:
            aio.run(run_file(input_dir, out, s, consumers=2))
        else:
            aio.call(s.redis_url, s, control.ensure_groups)
            publish_in_time_order(lib, input_dir, s)
            aio.run(drain(s, out))
    finally:
        aio.call(s.redis_url, s, control.reset)
    return read_outputs(out)


def evaluate(folder: str | Path, settings: Settings, rules: str | None = None, shadow: str | None = None,
             keep: str | Path | None = None, interleave: bool = True) -> dict:
    """Run and score; returns {"report", "seconds", "shadow": {...} | None} (report: evaluation.Report)."""
    from .tools.local import redis_for_run
    lib = load(folder)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shopstream-eval-") as tmp:
        base = Path(keep) if keep else Path(tmp)
        input_dir = write_input(lib, base / "input")
        with redis_for_run(settings) as s:
            merged = lib if interleave else None
            decisions, alerts = run_once(input_dir, base / "live", s, rules, merged)
            other = run_once(input_dir, base / "shadow", s, shadow, merged) if shadow else None
    source = "decisions" if decisions is not None else "alerts"
    report = evaluation.score(lib.labels, evaluation.flagged(decisions, alerts), source)
    result = {"report": report, "seconds": time.monotonic() - started, "shadow": None,
              "alerts": alerts}
    if other is not None:
        result["shadow"] = {
            "report": evaluation.score(lib.labels, evaluation.flagged(*other),
                                       "decisions" if other[0] is not None else "alerts"),
            "diff": evaluation.shadow_diff(evaluation.fired(decisions, alerts), evaluation.fired(*other))}
    return result


def print_shadow(diff: dict, labels: list[evaluation.Label], live: str, shadow: str) -> str:
    by_user = {lab.user_id: lab for lab in labels}
    lines = []
    for key, title in (("live_only", f"raised by {live} only"), ("shadow_only", f"raised by {shadow} only")):
        lines.append(f"\n{title}: {len(diff[key])} (user, rule)")
        for uid, rule in diff[key]:
            lab = by_user.get(uid)
            what = f"{lab.pattern} ({'fraud' if lab.fraud else 'ordinary'})" if lab else "unlabelled"
            lines.append(f"  {uid:<10} {rule:<24} {what}")
    return "\n".join(lines)


def command(args, settings: Settings) -> None:
    """``shopstream evaluate DIR [--rules FILE] [--shadow FILE2] [--json OUT] [--check] [--keep DIR]``."""
    result = evaluate(args.dir, settings, args.rules, args.shadow, args.keep, args.interleave)
    report = result["report"]
    live = args.rules or "the rules in force"
    print(f"\nscenario library {args.dir}: {sum(r.actors for r in report.rows)} users, rules {live}, "
          f"{'sources merged in event time' if args.interleave else 'replayed one source after the other'}\n")
    print(evaluation.render(report))
    out = {"live": evaluation.as_json(report), "seconds": round(result["seconds"], 1)}
    if result["shadow"]:
        print(f"\nshadow run with {args.shadow}:\n")
        print(evaluation.render(result["shadow"]["report"]))
        print(print_shadow(result["shadow"]["diff"], load(args.dir).labels, live, args.shadow))
        out["shadow"] = evaluation.as_json(result["shadow"]["report"])
        out["shadow_diff"] = result["shadow"]["diff"]
    print(f"\nevaluated in {result['seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.check:
        failures = evaluation.check(report)
        for f in failures:
            print(f"CHECK FAILED: {f}", file=sys.stderr)
        if failures:
            sys.exit(1)
        print("check: every target met")

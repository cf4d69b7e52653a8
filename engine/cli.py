"""The ``shopstream`` command line.

Argument parsing and one function per command; no event loop, server or pub/sub loop here: a
command calls the module that does the work (engine/aio.py runs coroutines, consumers/runner.py
the consumer process, engine/tail.py the alerts subscription, engine/tools/local.py local servers).
Over 300 lines for one reason: ``build_parser`` is the table of every sub-command and its options
(about 100 lines), kept beside the short functions they call.
"""

from __future__ import annotations

import argparse
import importlib.util
from importlib import resources
import sys
from pathlib import Path
from typing import Any

import redis

from . import aio, control, export, logs
from .connection import RedisServerMissing, sync_client
from .pipeline import NamespaceInUse
from .producer import BackPressure
from .settings import Settings, load_settings

SAMPLE = Path(str(resources.files("shopstream.data")))     # data/ in the source tree, a package resource installed


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings({"redis_url": args.redis_url, "namespace": args.namespace,
                          "partitions": args.partitions, **extra}, config_file=args.config)


def _need_url(settings: Settings) -> str:
    if not settings.redis_url:
        sys.exit("error: set REDIS_URL (or --redis-url) to the Redis this command should use")
    return settings.redis_url


def _call(settings: Settings, fn, *args):
    """Run ``await fn(client, settings, *args)`` with an asyncio client of REDIS_URL."""
    return aio.call(_need_url(settings), settings, fn, *args)


# -- commands ----------------------------------------------------------------------------------
def cmd_generate(args, settings):
    from .tools.generate import GeneratorConfig, write_all
    cfg = GeneratorConfig(seed=args.seed, users=args.users, hours=args.hours, start=args.start,
                          fraud=not args.no_fraud)
    files = write_all(Path(args.out), cfg)
    for name, count in files.items():
        print(f"wrote {count:>8,} records to {Path(args.out) / name}")


def cmd_replay(args, settings):
    from .producer import replay
    client = sync_client(_need_url(settings))
    try:
        control.refuse_if_flushed(client, settings)
    except control.InputEnded as exc:
        sys.exit(f"error: {exc}")
    if args.from_lake:
        from .lake.commands import replay_from_lake
        return replay_from_lake(args, settings, client)
    if not args.file:
        sys.exit("error: give a FILE or folder to replay, or --from-lake --date D")
    for kind, sent in replay(client, args.file, settings, rate=args.rate, progress=True).items():
        if kind == "catalog":
            print(f"loaded {sent:,} products into {settings.namespace}:product:<id> and the {settings.namespace}:catalog"
                  " changelog")
        else:
            print(f"published {sent:,} events to {settings.partitions} partitions of {settings.namespace}:{{p}}:{kind}")


def cmd_consume(args, settings):
    from shopstream.consumers.runner import consume
    consume(_need_url(settings), settings, until_idle=args.until_idle, profile=args.profile)


def cmd_trim(args, settings):
    from .retention import trim_all
    removed = _call(settings, trim_all)
    print(f"trimmed {removed:,} input entries acknowledged by every consumer group and older than "
          f"{settings.input_retention_ms / 1000:g} s")


def cmd_flush(args, settings):
    closed, finalized = _call(settings, control.flush)
    print(f"flushed: {closed:,} sessions closed, {finalized:,} minutes finalized")


def cmd_export(args, settings):
    written = export.write(_call(settings, export.collect), args.out)
    for name, count in written.items():
        print(f"{count:>8,} {name:<9} -> {Path(args.out) / (name + '.jsonl')}")


def cmd_erase(args, settings):
    import uuid

    from .erase import audit_key_sync, erase
    request_id = uuid.uuid4().hex
    report = _call(settings, erase, args.user, request_id)
    print(f"erased {args.user!r} from Redis (request {request_id}): "
          + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.items()))
    print("a tombstone drops the user's later events; the audit stream keeps only an HMAC of the id")
    lake = _lake_if_any(settings)
    if lake is not None:
        from .lake.erasure import erase_from_lake
        done = erase_from_lake(lake, args.user, request_id, audit_key_sync(sync_client(settings.redis_url), settings))
        print(f"erased {args.user!r} from the lake {lake.uri}: {done['rows_deleted']:,} rows deleted, "
              f"{done['rows_redacted']:,} redacted, old files removed")


def _lake_if_any(settings: Settings):
    """The lake at lake_uri when the lake extra is installed and a lake is there (engine/lake)."""
    import importlib.util
    if importlib.util.find_spec("deltalake") is None:
        return None
    from .lake.store import Lake
    lake = Lake(settings.lake_uri)
    return lake if lake.exists() else None


def cmd_reset(args, settings):
    print(f"deleted {_call(settings, control.reset):,} keys of namespace {settings.namespace!r}")


def cmd_run(args, settings):
    from .pipeline import run_file
    from .report import print_run
    from .tools.local import redis_for_run
    if not Path(args.file).exists():
        sys.exit(f"error: no such file or folder: {args.file}")
    with redis_for_run(settings) as s:
        result = aio.run(run_file(args.file, args.out, s, consumers=args.consumers, rate=args.rate, reset=args.reset))
    print_run(result, args.out, detailed=False)


def cmd_demo(args, settings):
    from .pipeline import run_file
    from .report import print_run
    from .tools.local import redis_for_run
    path = Path(args.file) if args.file else SAMPLE
    print(f"ShopStream demo: {path.name}/ (clicks, transactions, support, catalog) -> Redis Streams -> "
          f"{args.consumers} consumers -> sessions, metrics, profiles, fraud alerts\n")
    with redis_for_run(settings) as s:
        result = aio.run(run_file(path, args.out, s, consumers=args.consumers, reset=args.reset))
        cold = None
        if importlib.util.find_spec("deltalake") is not None:      # the lake extra: archive, dimensions, report
            from .lake.demo import archive_and_report
            cold = archive_and_report(s, Path(args.out))
    print_run(result, args.out, detailed=True, truth=path / "fraud_truth.jsonl" if path.is_dir() else None)
    if cold is not None:
        from .lake.demo import describe
        print(describe(cold))
    else:
        print("\n(the lake is not installed: pip install 'shopstream[lake]' archives the run and writes the daily report)")


def cmd_bench(args, settings):
    if args.flush:
        from .tools.benchflush import print_report, run as run_flush
        print_report(run_flush(args.flush))
        return
    if args.cluster:
        from .tools.benchcluster import run as run_cluster
        consumers = [int(x) for x in args.consumers.split(",")]
        run_cluster(args.events, args.users, args.runs, consumers[len(consumers) // 2], args.cluster,
                    args.appendfsync, args.json, rate=args.rate, latency_events=args.latency_events)
        return
    from .tools.bench import run, run_file_rounds
    if args.run_only:
        result = run_file_rounds(args.events, args.users, args.run_rounds or 3)
        print(f"shopstream run {result['file']}: median {result['median_s']:.2f} s whole process "
              f"({args.events / result['median_s']:,.0f} events/s) of " + ", ".join(f"{x:.2f}" for x in result["seconds"]))
        return
    run(args.events, args.users, args.runs, [int(x) for x in args.consumers.split(",")],
        [int(x) for x in args.scale_partitions.split(",") if x], args.rate, args.json, args.profile, args.growth,
        args.appendfsync, rules_share=args.rules_share, run_rounds=args.run_rounds,
        latency_events=args.latency_events)
    if args.profile:
        import pstats
        print(f"\nprofile of one engine consumer ({args.profile}):")
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(15)


def cmd_cluster(args, settings):
    from .tools.local import hold_cluster
    hold_cluster(args.masters, args.replicas, args.port, settings)


def cmd_layout(args, settings):
    from .keys import Keys
    from .layout import describe, partitions_by_master
    client = sync_client(_need_url(settings))
    print(f"{settings.partitions} partitions of namespace {settings.namespace!r}:")
    print("\n".join(describe(partitions_by_master(client, Keys(settings.namespace, settings.partitions)))))


def cmd_tail(args, settings):
    from .tail import tail
    tail(sync_client(_need_url(settings)), settings)


def cmd_metrics(args, settings):
    from .report import print_live_minutes
    client = sync_client(_need_url(settings))
    print_live_minutes(client, settings, args.last)


def cmd_profile(args, settings):
    from .report import print_profile
    print_profile(_call(settings, export.read_profile, args.user), args.user, settings)


def cmd_sessions(args, settings):
    from .report import print_user_sessions
    client = sync_client(_need_url(settings))
    print_user_sessions(client, settings, args.user)


def cmd_evaluate(args, settings):
    from .evaluate import command
    command(args, settings)


def cmd_backtest(args, settings):
    from .lake.backtest import command
    command(args, settings)


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options accepted before or after the sub-command."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--redis-url", default=default(None), help="Redis or Redis Cluster URL (default: $REDIS_URL)")
    parser.add_argument("--namespace", default=default(None), help="key namespace (default ss)")
    parser.add_argument("--partitions", type=int, default=default(None), help="partition count (default 16)")
    parser.add_argument("--config", default=default(None), help="TOML settings file (default: $SHOPSTREAM_CONFIG)")
    parser.add_argument("--log-level", default=default("info"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopstream", description=__doc__.split("\n", 1)[0])
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write the four sample data files and fraud_truth.jsonl from a seed")
    p.add_argument("--out", default="data")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--hours", type=float, default=3.0)
    p.add_argument("--start", default="2026-11-02T08:00:00Z")
    p.add_argument("--no-fraud", action="store_true",
                   help="plant no fraud patterns (the bots stay): the base data alone")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("replay", help="publish a file (clicks, transactions.csv, support tickets, catalog) or a"
                                      " folder of them to the streams")
    p.add_argument("file", nargs="?", help="a file (its kind is read from its records) or a folder with the sample files")
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--from-lake", action="store_true", help="instead: re-publish one day's raw input from the lake")
    p.add_argument("--date", help="with --from-lake: the day, YYYY-MM-DD (UTC)")
    p.add_argument("--lake", help="with --from-lake: lake folder or URI (default: setting lake_uri, lake/)")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("consume", help="run one consumer of the group (run several side by side)")
    p.add_argument("--until-idle", action="store_true", help="exit once every partition is drained (and, during `run`, the input is"
                   " complete: its end-of-input signal)")
    p.add_argument("--profile", help="write cProfile stats of this consumer to FILE at exit")
    p.set_defaults(fn=cmd_consume)

    p = sub.add_parser("bench", help="throughput, Redis cost, latency and memory vs the raw transport")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3, help="transport/engine pairs; medians are reported")
    p.add_argument("--consumers", default="2",
                   help="consumer count; several (e.g. 1,2,4): also scale over them (the middle one is the default)")
    p.add_argument("--scale-partitions", default="", help="also scale over these partition counts (e.g. 1,8,32)")
    p.add_argument("--rate", type=float, default=16_667, help="offered load for the latency stage, events/s")
    p.add_argument("--latency-events", type=int, help="events of the latency stage (default: all of them)")
    p.add_argument("--rules-share", action="store_true", help="also run the engine with every rule disabled")
    p.add_argument("--run-rounds", type=int, default=0,
                   help="also time `shopstream run` on the clickstream file (EVENTS clicks) this many times")
    p.add_argument("--run-only", action="store_true",
                   help="instead: only time `shopstream run` on the clickstream file (--run-rounds, default 3)")
    p.add_argument("--growth", action="store_true", help="also run 5x the events (throughput must not fall)")
    p.add_argument("--appendfsync", default="everysec", choices=["everysec", "always", "no"],
                   help="Redis durability during the bench (no = AOF off)")
    p.add_argument("--json", help="write the full report here")
    p.add_argument("--cluster", type=int, metavar="MASTERS",
                   help="instead: the engine on one redis-server vs a Redis Cluster of MASTERS masters, same run:"
                        " throughput, and detection latency at --rate")
    p.add_argument("--profile", help="cProfile one engine consumer; top functions printed, stats saved here")
    p.add_argument("--flush", type=int, metavar="SESSIONS",
                   help="instead: the longest script call while a flush closes SESSIONS open sessions")
    p.set_defaults(fn=cmd_bench)

    sub.add_parser("flush", help="end of input: close every open session and minute").set_defaults(fn=cmd_flush)
    sub.add_parser("trim", help="drop input entries every consumer group has acknowledged (consumers do it too)"
                   ).set_defaults(fn=cmd_trim)

    p = sub.add_parser("export", help="write the outputs as JSON Lines")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_export)

    for name, fn, helptext in (("run", cmd_run, "replay FILE + consumers until drained + flush + export"),
                               ("demo", cmd_demo, "the main job on the sample data, with a readable summary")):
        p = sub.add_parser(name, help=helptext)
        if name == "run":
            p.add_argument("file", help="a clickstream file, or a folder with the four sample files")
            p.add_argument("--out", required=True)
        else:
            p.add_argument("--file", help="a folder of sample files or one clickstream file (default: data/)")
            p.add_argument("--out", default="out/demo")
        p.add_argument("--consumers", type=int, default=2)
        if name == "run":
            p.add_argument("--rate", type=float, help="replay rate, events/s (default: as fast as possible)")
        p.add_argument("--reset", action="store_true", help="delete the namespace's keys first")
        p.set_defaults(fn=fn)

    sub.add_parser("tail", help="print alerts as they are published").set_defaults(fn=cmd_tail)
    p = sub.add_parser("cluster", help="run a local Redis Cluster in the foreground and print its REDIS_URL")
    p.add_argument("--masters", type=int, default=3)
    p.add_argument("--replicas", type=int, default=1, help="replicas per master")
    p.add_argument("--port", type=int, default=7000, help="first port, the others follow (0 = any free ports)")
    p.set_defaults(fn=cmd_cluster)
    sub.add_parser("layout", help="which Redis Cluster master serves which partition").set_defaults(fn=cmd_layout)
    p = sub.add_parser("metrics", help="per-minute events and unique users, live")
    p.add_argument("--last", type=int, default=30, help="minutes to show")
    p.set_defaults(fn=cmd_metrics)
    p = sub.add_parser("profile", help="a user's unified customer profile (risk score included)")
    p.add_argument("user")
    p.set_defaults(fn=cmd_profile)
    p = sub.add_parser("sessions", help="a user's open and closed sessions")
    p.add_argument("user")
    p.set_defaults(fn=cmd_sessions)
    p = sub.add_parser("erase", help="GDPR: remove everything of one user, drop their later events")
    p.add_argument("user")
    p.set_defaults(fn=cmd_erase)
    sub.add_parser("reset", help="delete every key of the namespace").set_defaults(fn=cmd_reset)
    p = sub.add_parser("evaluate", help="replay a labelled scenario library through the engine: recall, precision,"
                                        " ordinary customers flagged, detection delay (docs/rules.md)")
    p.add_argument("dir", help="a folder of scenario files (*.jsonl), e.g. data/scenarios")
    p.add_argument("--rules", help="rules file to evaluate (default: the setting rules_file, or the built-in rules)")
    p.add_argument("--shadow", help="a second rules file run beside it: what each raises that the other does not")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--check", action="store_true", help="exit 1 unless the targets of issue 16 are met")
    p.add_argument("--keep", help="keep the engine's input and exports in this folder")
    p.add_argument("--by-source", dest="interleave", action="store_false",
                   help="publish each source whole, one after the other, like `run` on a folder (default: clicks,"
                        " payments and tickets merged in event time, as they arrive live)")
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("backtest", help="a rules file over the lake's archived input: alerts per rule")
    p.add_argument("--lake", help="lake folder or URI (default: setting lake_uri)")
    p.add_argument("--rules", help="rules file (default: the setting rules_file, or the built-in rules)")
    p.add_argument("--date", help="one day, YYYY-MM-DD (default: every day in the lake, in order)")
    p.add_argument("--labels", help="a scenario folder or labels file: also print the evaluation table")
    p.set_defaults(fn=cmd_backtest)
    from .lake.commands import add_commands       # argparse only: the lake's libraries load when a command runs
    add_commands(sub)
    for p in sub.choices.values():
        _common(p, top=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        settings = _settings(args)
    except ValueError as exc:             # a bad setting: which one and where it came from (SettingsError)
        sys.exit(f"error: {exc}")
    try:
        args.fn(args, settings)
    except (RedisServerMissing, NamespaceInUse, BackPressure, OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    except redis.ConnectionError as exc:
        sys.exit(f"error: cannot reach Redis at {settings.redis_url}: {exc}")


if __name__ == "__main__":
    main()

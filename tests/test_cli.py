"""The command line end to end, as a user runs it (real processes, real redis-server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shopstream.engine.tools.generate import GeneratorConfig, write_all

from . import reference as ref
from .helpers import by_rule
from .support import REPO, check_export, read_jsonl, reference_inputs, shopstream, wait_until

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    write_all(out, GeneratorConfig(seed=99, users=150, hours=2.0))
    return out / "clickstream_events.json"


@pytest.mark.parametrize("consumers", [1, 4])
def test_run_matches_the_batch_reference(real_redis_url, dataset, tmp_path, consumers):
    out = tmp_path / "out"
    stdout = shopstream("run", str(dataset), "--out", str(out), "--consumers", str(consumers),
                        "--namespace", f"cli{consumers}", env={"REDIS_URL": real_redis_url})
    assert "Sessions:" in stdout and "Export:" in stdout
    late = read_jsonl(out / "late.jsonl")
    dlq = read_jsonl(out / "dlq.jsonl")
    assert late and dlq                                   # the generator plants both
    events = reference_inputs(dataset, {l["record"] for l in late})
    sessions = [{k: s[k] for k in ("user_id", "start", "end", "event_count", "counts")}
                for s in read_jsonl(out / "sessions.jsonl")]
    assert sessions == ref.sessions(events)
    assert by_rule(read_jsonl(out / "alerts.jsonl")) == ref.alerts(events)
    got, want = read_jsonl(out / "minutes.jsonl"), ref.minutes(events)
    assert [(m["minute"], m["events"]) for m in got] == [(m["minute"], m["events"]) for m in want]
    assert all(abs(g["unique_users"] - w["unique_users"]) <= max(1, 0.02 * w["unique_users"])
               for g, w in zip(got, want))
    lines = len(dataset.read_bytes().splitlines())
    assert len(events) + len(late) + len(dlq) == lines     # every record accounted for


def test_run_without_redis_url_starts_a_private_server(dataset, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run([sys.executable, "-m", "shopstream.engine.cli", "run", str(dataset), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "started a private redis-server" in proc.stdout
    assert read_jsonl(tmp_path / "sessions.jsonl")


def comparable_export(out, namespace: str) -> dict[str, list]:
    """An export folder without what a run cannot repeat: alerts' detected_at (the wall clock),
    dead letters' entry_id (the id Redis gave the entry) and the namespace in their stream name;
    dead letters sorted (they are exported stream by stream)."""
    rows = {name: read_jsonl(out / f"{name}.jsonl") for name in ("sessions", "minutes", "alerts", "late", "dlq")}
    for alert in rows["alerts"]:
        del alert["detected_at"]
    for dead in rows["dlq"]:
        del dead["entry_id"]
        dead["stream"] = dead["stream"].removeprefix(namespace)
    rows["dlq"].sort(key=json.dumps)
    return rows


def test_json_array_input_gives_the_same_result_as_json_lines(real_redis_url, dataset, tmp_path):
    """The same records, once one per line and once as one JSON array: the two exports are equal."""
    records = [line for line in dataset.read_bytes().splitlines() if line.startswith(b"{") and line.endswith(b"}")]
    (tmp_path / "lines.json").write_bytes(b"\n".join(records) + b"\n")
    (tmp_path / "array.json").write_bytes(b"[" + b",".join(records) + b"]")
    exports = {}
    for form in ("lines", "array"):
        shopstream("run", str(tmp_path / f"{form}.json"), "--out", str(tmp_path / form), "--namespace", f"form-{form}",
                   env={"REDIS_URL": real_redis_url})
        exports[form] = comparable_export(tmp_path / form, f"form-{form}")
    lines, array = exports["lines"], exports["array"]
    assert len(lines["sessions"]) > 100 and lines["alerts"] and lines["late"] and lines["dlq"]   # not vacuous
    for name in lines:
        assert array[name] == lines[name], name


def test_replay_consume_flush_export_as_separate_commands_match_the_batch_reference(real_redis_url, dataset,
                                                                                    tmp_path):
    env = {"REDIS_URL": real_redis_url, "SHOPSTREAM_NAMESPACE": "pieces", "SHOPSTREAM_IDLE_TIMEOUT_MS": "0",
           "SHOPSTREAM_METRICS_PORT": "0"}
    assert "published" in shopstream("replay", str(dataset), env=env)
    shopstream("consume", "--until-idle", env=env)
    assert "sessions closed" in shopstream("flush", env=env)
    assert "sessions" in shopstream("export", "--out", str(tmp_path), env=env)
    check_export(tmp_path, dataset)                  # sessions and alerts; every record accounted for
    assert "deleted" in shopstream("reset", env=env)


def test_replay_into_a_flushed_namespace_is_refused_with_what_to_do(real_redis_url, dataset):
    """flush sets every watermark to the end of time: input replayed after it would be late, silently.
    replay refuses instead and says what to do; after `reset` it works again."""
    env = {"REDIS_URL": real_redis_url, "SHOPSTREAM_NAMESPACE": "ended", "SHOPSTREAM_IDLE_TIMEOUT_MS": "0",
           "SHOPSTREAM_METRICS_PORT": "0"}
    shopstream("replay", str(dataset), env=env)
    shopstream("consume", "--until-idle", env=env)
    shopstream("flush", env=env)
    proc = subprocess.run([sys.executable, "-m", "shopstream.engine.cli", "replay", str(dataset)], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **env}, timeout=120)
    assert proc.returncode != 0
    assert "was flushed" in proc.stderr and "shopstream reset" in proc.stderr
    shopstream("reset", env=env)
    assert "published" in shopstream("replay", str(dataset), env=env)
    shopstream("reset", env=env)


def test_the_documented_redis_cli_commands_show_something(real_redis_url, tmp_path):
    """Every `redis-cli …` command of the README's "Look inside" table and of the data model's
    example queries, run after the README's replay with a consumer running, answers with
    something (not nil, not empty)."""
    import re
    import shlex

    import redis

    from shopstream.engine.keys import INPUTS
    env = {"REDIS_URL": real_redis_url, "SHOPSTREAM_METRICS_PORT": "0", "SHOPSTREAM_IDLE_TIMEOUT_MS": "0"}
    client = redis.Redis.from_url(real_redis_url)
    client.flushall()
    shopstream("replay", str(REPO / "data"), env=env)
    consumer = subprocess.Popen([sys.executable, "-m", "shopstream.engine.cli", "--log-level", "warning", "consume"],
                                cwd=REPO, env={**os.environ, **env})             # running, as in the README
    try:
        def drained():
            try:
                groups = [client.xinfo_groups(f"ss:{{{p}}}:{source}") for p in range(16) for source in INPUTS]
            except redis.ResponseError:           # the consumer has not created the groups yet
                return False
            return all(len(g) == 1 and g[0]["pending"] == 0 and g[0]["lag"] == 0 for g in groups)
        wait_until(drained, timeout=60, what="the consumer to read and apply every input entry", poll=0.1)
        commands = [c for doc in ("README.md", "docs/data-model.md")
                    for c in re.findall(r"\| `redis-cli ([^`]+)` \|", (REPO / doc).read_text())]
        assert len(commands) >= 17
        for command in commands:
            args = shlex.split(command)
            if args[0] == "SUBSCRIBE":
                continue
            done = subprocess.run(["redis-cli", "-u", real_redis_url, *args], capture_output=True, text=True,
                                  timeout=30)
            shown = (done.stdout + done.stderr).strip()
            assert shown and shown not in ("0", "(nil)", "(empty array)"), (command, shown)
        (user,) = client.zrange("ss:{13}:open", 0, 0)              # a user with an open session
        assert "  open   " in shopstream("sessions", user.decode(), env=env)
    finally:
        consumer.terminate()
        consumer.wait(timeout=30)
        client.flushall()


def test_a_taken_metrics_port_moves_to_the_next_free_one():
    import socket

    from prometheus_client import CollectorRegistry

    from shopstream.engine.tools.servers import free_port
    from shopstream.engine.metrics import ConsumerMetrics
    holder = socket.socket()
    holder.bind(("0.0.0.0", free_port()))
    holder.listen()
    try:
        taken = holder.getsockname()[1]
        port = ConsumerMetrics(CollectorRegistry()).serve(taken)
        assert port != taken and port > 0
    finally:
        holder.close()


def test_three_consumers_side_by_side_with_default_settings(real_redis_url, tmp_path):
    """As the README says: `shopstream consume` started three times on one host (default metrics
    port 9108): all stay up, each serves /metrics on its own port (logged), SIGTERM stops them."""
    import re
    import signal
    import urllib.request

    import redis
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPSTREAM_")}
    env.update(REDIS_URL=real_redis_url, SHOPSTREAM_NAMESPACE="side")
    logs = [tmp_path / f"consumer{i}.log" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "shopstream.engine.cli", "consume"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=log.open("wb")) for log in logs]
    client = redis.Redis.from_url(real_redis_url)
    try:
        ports: dict[int, int] = {}

        def all_serving() -> bool:
            for i, log in enumerate(logs):
                assert procs[i].poll() is None, log.read_text()[-2000:]
                found = re.search(r"serving /metrics on port (\d+)", log.read_text())
                if found:
                    ports[i] = int(found.group(1))
            return len(ports) == 3 and client.zcard("side:consumers") == 3
        wait_until(all_serving, timeout=60, poll=0.05,
                   what=lambda: f"three consumers serving /metrics: {({str(log): log.read_text()[-500:] for log in logs})}")
        assert len(set(ports.values())) == 3, ports
        for port in ports.values():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                assert b"shopstream_owned_partitions" in reply.read()
        assert all(proc.poll() is None for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in procs]
        client.delete("side:consumers")
    assert codes == [0, 0, 0]


def test_trim_command_drops_only_acknowledged_input(real_redis_url):
    import redis
    env = {"REDIS_URL": real_redis_url, "SHOPSTREAM_NAMESPACE": "trimcli", "SHOPSTREAM_PARTITIONS": "1",
           "SHOPSTREAM_INPUT_RETENTION_MS": "0", "SHOPSTREAM_METRICS_PORT": "0"}
    client = redis.Redis.from_url(real_redis_url)
    client.xgroup_create("trimcli:{0}:clicks", "shopstream", id="0", mkstream=True)
    ids = [client.xadd("trimcli:{0}:clicks", {"e": b"{}"}) for _ in range(10)]
    client.xreadgroup("shopstream", "c", {"trimcli:{0}:clicks": ">"}, count=6)
    client.xack("trimcli:{0}:clicks", "shopstream", *ids[:4])            # 4 and 5 pending, 6.. unread
    assert "trimmed 4 input entries" in shopstream("trim", env=env)
    assert client.xrange("trimcli:{0}:clicks", count=1)[0][0] == ids[4]
    client.delete("trimcli:{0}:clicks")

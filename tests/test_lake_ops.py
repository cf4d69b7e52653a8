"""The cold path's Kubernetes manifests agree with the commands they run."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from shopstream.engine.cli import build_parser

REPO = Path(__file__).resolve().parent.parent


def test_lake_manifests():
    archiver, cron = yaml.safe_load_all((REPO / "ops" / "k8s" / "lake.yaml").read_text())
    spec = archiver["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    command = shlex.split(container["args"][0].replace("${HOSTNAME##*-}", "0"))[1:]
    args = build_parser().parse_args(command[1:])
    assert args.fn.__name__ == "cmd_archive" and args.instances == spec["replicas"]
    assert args.metrics_port == container["ports"][0]["containerPort"]
    assert spec["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(args.metrics_port)
    nightly = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    steps = [shlex.split(step.strip()) for step in nightly.split(";")[2:] if step.strip()]
    assert [s[1] for s in steps] == ["compact", "dims", "report"]
    for step in steps:
        build_parser().parse_args([a.replace('"$day"', "2026-11-02").replace("$day", "2026-11-02") for a in step[1:]])
    env = {e["name"] for e in container["env"]}
    assert {"REDIS_URL", "SHOPSTREAM_LAKE_URI", "SHOPSTREAM_PARTITIONS"} <= env


def test_the_consumer_does_not_import_the_lake_nor_the_tools():
    """A consumer image is built without the `lake` extra: nothing it imports may need it; and a
    consumer process imports none of the developer tools (bench, generator, embedded servers)."""
    import subprocess
    import sys
    code = ("import sys, shopstream.consumers.consumer, shopstream.engine.cli, shopstream.engine.pipeline, "
            "shopstream.engine.erase; shopstream.engine.cli.build_parser().parse_args(['consume']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('deltalake', 'duckdb', 'pyarrow', "
            "'openlineage') or m.startswith('shopstream.engine.lake.') and m != 'shopstream.engine.lake.commands'"
            " or m.startswith('shopstream.engine.tools.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

"""Operations config: Prometheus alert rules (promtool unit tests) and scrape config."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .test_cli import REPO

PROM = REPO / "ops" / "prometheus"


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (apt-get install prometheus)")
        pytest.skip("promtool not installed (Debian: apt-get install --no-install-recommends prometheus)")
    return path


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"],
                                  ["check", "config", "prometheus.yml"]])
def test_promtool(promtool, args):
    done = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_alert_rules_use_metrics_the_consumer_exports():
    from prometheus_client import generate_latest

    from engine.metrics import ConsumerMetrics
    exported = generate_latest(ConsumerMetrics().registry).decode()
    rules = (PROM / "alerts.yml").read_text()
    for name in ("shopstream_events_total", "shopstream_consumer_lag_entries",
                 "shopstream_detection_latency_seconds_bucket", "shopstream_apply_errors_total",
                 "shopstream_pending_entries", "shopstream_input_cap_entries"):
        assert name in rules
        assert name.removesuffix("_bucket") in exported


def test_a_real_prometheus_scrapes_a_running_consumer_and_evaluates_the_rules(real_redis_url, tmp_path, promtool):
    """Start a consumer with /metrics, and a Prometheus scraping it with ops/prometheus/alerts.yml."""
    import json
    import sys
    import time
    import urllib.request

    from engine.connection import free_port

    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.fail("the prometheus binary comes with promtool (apt-get install prometheus)")
    metrics_port, prom_port = free_port(), free_port()
    env = {**os.environ, "REDIS_URL": real_redis_url, "SHOPSTREAM_NAMESPACE": "prom",
           "SHOPSTREAM_METRICS_PORT": str(metrics_port), "SHOPSTREAM_IDLE_TIMEOUT_MS": "0"}
    consumer = subprocess.Popen([sys.executable, "-m", "engine.cli", "--log-level", "warning", "consume"],
                                cwd=REPO, env=env)
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text())
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: shopstream-consumer\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def api(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/{path}", timeout=2) as r:
                return json.load(r)["data"]
        except OSError:
            return None

    try:
        deadline = time.monotonic() + 60
        while True:
            targets = api("targets")
            rules = api("rules")
            up = bool(targets) and any(t["health"] == "up" for t in targets["activeTargets"])
            evaluated = bool(rules) and all(r["health"] == "ok" and r.get("lastEvaluation", "").startswith("20")
                                            for g in rules["groups"] for r in g["rules"])
            if up and evaluated and rules["groups"]:
                break
            assert time.monotonic() < deadline, f"targets={targets} rules={rules}"
            time.sleep(0.2)
        series = api("query?query=shopstream_owned_partitions")
        assert series and float(series["result"][0]["value"][1]) >= 0
    finally:
        for proc in (consumer, prom):
            proc.terminate()
            proc.wait(timeout=30)


def _yaml(path):
    import yaml
    return yaml.safe_load(path.read_text())


def test_compose_stack_structure_and_referenced_files():
    compose = _yaml(REPO / "docker-compose.yml")
    services = compose["services"]
    assert {"redis", "consumer", "producer", "redis-exporter", "prometheus", "grafana", "tail"} <= set(services)
    for name, svc in services.items():
        image = svc.get("image")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: pin the image"
    assert "healthcheck" in services["redis"] and "healthcheck" in services["prometheus"]
    assert {"redis-data", "prometheus-data"} <= set(compose["volumes"])
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), source
    assert (REPO / services["consumer"]["build"]["dockerfile"]).exists()
    assert services["consumer"]["stop_grace_period"]


def test_grafana_dashboard_queries_exported_metrics():
    import json
    dash = json.loads((REPO / "ops" / "grafana" / "dashboards" / "shopstream.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("shopstream_events_total", "shopstream_consumer_lag_entries", "shopstream_pending_entries",
                   "shopstream_detection_latency_seconds_bucket", "shopstream_alerts_total", "redis_memory_used_bytes"):
        assert metric in exprs
    provider = _yaml(REPO / "ops" / "grafana" / "provisioning" / "dashboards" / "shopstream.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_k8s_manifests():
    from engine.settings import Settings
    deployment = _yaml(REPO / "ops" / "k8s" / "consumer-deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"
    assert container["readinessProbe"]
    scaled = _yaml(REPO / "ops" / "k8s" / "keda-scaledobject.yaml")
    partitions = Settings().partitions
    streams = sorted(t["metadata"]["stream"] for t in scaled["spec"]["triggers"])
    assert streams == sorted(f"ss:{{{p}}}:clicks" for p in range(partitions))
    assert scaled["spec"]["maxReplicaCount"] == partitions
    assert all(t["type"] == "redis-streams" and t["metadata"]["consumerGroup"] == "shopstream"
               for t in scaled["spec"]["triggers"])

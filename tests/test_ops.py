"""Operations config: Prometheus alert rules (promtool unit tests) and scrape config."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .support import REPO, wait_until

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

    from shopstream.engine.metrics import ConsumerMetrics
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
    import urllib.request

    from shopstream.engine.tools.servers import free_port

    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.fail("the prometheus binary comes with promtool (apt-get install prometheus)")
    metrics_port, prom_port = free_port(), free_port()
    env = {**os.environ, "REDIS_URL": real_redis_url, "SHOPSTREAM_NAMESPACE": "prom",
           "SHOPSTREAM_METRICS_PORT": str(metrics_port), "SHOPSTREAM_IDLE_TIMEOUT_MS": "0"}
    consumer = subprocess.Popen([sys.executable, "-m", "shopstream.engine.cli", "--log-level", "warning", "consume"],
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
        seen = {}

        def scraped_and_evaluated() -> bool:
            seen.update(targets=api("targets"), rules=api("rules"))
            targets, rules = seen["targets"], seen["rules"]
            up = bool(targets) and any(t["health"] == "up" for t in targets["activeTargets"])
            evaluated = bool(rules) and all(r["health"] == "ok" and r.get("lastEvaluation", "").startswith("20")
                                            for g in rules["groups"] for r in g["rules"])
            return up and evaluated and bool(rules["groups"])
        wait_until(scraped_and_evaluated, timeout=60, poll=0.2,
                   what=lambda: f"Prometheus to scrape and evaluate: {seen}")
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


# Minimal JSON Schemas of the two KEDA kinds (keda.sh/v1alpha1, after KEDA's CRDs): the fields we
# use, their types, required ones, and no unknown keys, so a typo fails as it would at kubectl apply.
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
                                                                  "namespace": {"type": "string"},
                                                                  "labels": {"type": "object"}}}
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"}, "metadata": _META,
            "spec": {"type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
                     "properties": {
                         "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                            "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                                           "apiVersion": {"type": "string"}}},
                         "minReplicaCount": {"type": "integer", "minimum": 0},
                         "maxReplicaCount": {"type": "integer", "minimum": 1},
                         "cooldownPeriod": {"type": "integer"}, "pollingInterval": {"type": "integer"},
                         "triggers": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                             "properties": {
                                 "type": {"type": "string"}, "name": {"type": "string"},
                                 "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                 "authenticationRef": {"type": "object", "required": ["name"],
                                                       "additionalProperties": False,
                                                       "properties": {"name": {"type": "string"},
                                                                      "kind": {"type": "string"}}}}}}}}}},
    "TriggerAuthentication": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"},
            "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
                "secretTargetRef": {"type": "array", "items": {
                    "type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
                    "properties": {"parameter": {"type": "string"}, "name": {"type": "string"},
                                   "key": {"type": "string"}}}}}}}},
}


def _k8s_objects() -> dict[tuple[str, str], dict]:
    import yaml
    found = {}
    for path in sorted((REPO / "ops" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_k8s_manifests_validate_against_their_schemas():
    """Built-in kinds against Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: no
    unknown fields); the KEDA kinds against KEDA_SCHEMAS."""
    import jsonschema
    import kubernetes_validate
    objects = _k8s_objects()
    assert {kind for kind, _ in objects} == {"Deployment", "Secret", "ScaledObject", "TriggerAuthentication",
                                            "StatefulSet", "CronJob"}          # (the last two: the lake, lake.yaml)
    for (kind, name), doc in objects.items():
        if kind in KEDA_SCHEMAS:
            jsonschema.validate(doc, KEDA_SCHEMAS[kind])
        else:
            kubernetes_validate.validate(doc, "1.30", strict=True)
    broken = {**objects[("ScaledObject", "shopstream-consumer")], "spec": {"triggers": []}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, KEDA_SCHEMAS["ScaledObject"])


def test_k8s_references_resolve():
    """Every secret, key and authentication a manifest names is defined by another one; no
    trigger reads credentials from environment variables nobody sets."""
    from shopstream.engine.settings import Settings
    objects = _k8s_objects()
    secret = objects[("Secret", "shopstream-redis")]
    keys = set(secret["stringData"])
    deployment = objects[("Deployment", "shopstream-consumer")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"
    assert container["readinessProbe"]
    env_names = {e["name"] for e in container["env"]}
    for e in container["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert (ref["name"], ref["key"]) == ("shopstream-redis", ref["key"]) and ref["key"] in keys
    scaled = objects[("ScaledObject", "shopstream-consumer")]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    partitions = Settings().partitions
    assert scaled["spec"]["maxReplicaCount"] == partitions
    redis_triggers = [t for t in scaled["spec"]["triggers"] if t["type"] == "redis-streams"]
    assert sorted(t["metadata"]["stream"] for t in redis_triggers) == sorted(f"ss:{{{p}}}:clicks"
                                                                             for p in range(partitions))
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert "lagCount" not in meta, "XINFO GROUPS lag is stale after a Redis restart (docs/production.md)"
        for name, value in meta.items():
            if name.endswith("FromEnv"):
                assert value in env_names, f"{name}: {value} is set by no manifest"
        if trigger["type"] == "redis-streams":
            assert meta["consumerGroup"] == "shopstream" and "pendingEntriesCount" in meta
            auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
            refs = auth["spec"]["secretTargetRef"]
            assert {r["parameter"] for r in refs} >= {"address", "password"}
            assert all((r["name"], r["key"] in keys) == ("shopstream-redis", True) for r in refs)
    acl = (REPO / "ops" / "redis" / "users.acl").read_text()
    assert f"user {secret['stringData']['keda-username']} on" in acl
    assert "shopstream_consumer_lag_entries" in str(scaled["spec"]["triggers"])


def test_compose_redis_requires_auth_and_is_not_published_to_the_network():
    compose = _yaml(REPO / "docker-compose.yml")
    services = compose["services"]
    redis_svc = services["redis"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in redis_svc["volumes"]}
    assert mounts["./ops/redis/users.acl"] in redis_svc["command"] and "--aclfile" in redis_svc["command"]
    assert mounts["./ops/redis/redis.conf"] in redis_svc["command"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    for name in ("consumer", "producer", "tail"):
        url = services[name]["environment"]["REDIS_URL"]
        assert url.startswith("redis://shopstream-") and "@redis:6379" in url, (name, url)
    exporter = services["redis-exporter"]["environment"]
    assert exporter["REDIS_USER"] and exporter["REDIS_PASSWORD"]
    assert "user default off" in (REPO / "ops" / "redis" / "users.acl").read_text()


def test_compose_redis_config_and_acl_load_in_a_real_server(tmp_path):
    """The compose Redis's command line, on a real redis-server: the default user can do nothing,
    the healthcheck's user answers, maxmemory and noeviction are set."""
    import redis

    from shopstream.engine.tools.servers import free_port, redis_server_binary, wait_for_redis
    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), str(REPO / "ops" / "redis" / "redis.conf"), "--aclfile",
                             str(REPO / "ops" / "redis" / "users.acl"), "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://shopstream-operator:change-me-operator@127.0.0.1:{port}/0"
        wait_for_redis(url, proc)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert redis.Redis(port=port, username="shopstream-consumer", password="change-me-consumer").ping()
        exporter = redis.Redis(port=port, username="shopstream-exporter", password="change-me-exporter")
        assert exporter.info("memory")["maxmemory"] == 12 * 1024**3
        assert exporter.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.set("x", 1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

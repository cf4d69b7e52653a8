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
                 "shopstream_detection_latency_seconds_bucket", "shopstream_apply_errors_total"):
        assert name in rules
        assert name.removesuffix("_bucket") in exported

"""OpenLineage run events of the lake's jobs: to a JSON Lines file by default, to an HTTP
endpoint when OpenLineage is configured; START/COMPLETE/FAIL, datasets and row counts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

pytest.importorskip("openlineage.client")

from shopstream.engine.cli import main  # noqa: E402
from shopstream.engine.lake.lineage import lineage, redis_namespace  # noqa: E402
from shopstream.engine.lake.store import Lake  # noqa: E402
from tests import lakedata  # noqa: E402
from tests.lakedata import run_engine, stream_entries  # noqa: E402


def events(lake_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (lake_dir / "_lineage" / "events.jsonl").read_text().splitlines()]


async def test_archive_report_and_compact_emit_run_events(real, settings, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENLINEAGE_URL", raising=False)
    monkeypatch.delenv("SHOPSTREAM_LINEAGE_FILE", raising=False)
    settings = settings.replace(redis_url=real.url)
    await run_engine(real, settings)
    lake_dir = tmp_path / "lake"
    common = ["--redis-url", real.url, "--partitions", str(settings.partitions)]
    main(["archive", "--until-idle", "--lake", str(lake_dir), *common])
    main(["report", "--date", lakedata.DAY, "--lake", str(lake_dir), "--out", str(tmp_path / "r"), *common])
    main(["compact", "--lake", str(lake_dir), *common])
    got = events(lake_dir)
    assert [(e["job"]["name"], e["eventType"]) for e in got] == [
        ("archive", "START"), ("archive", "COMPLETE"), ("report", "START"), ("report", "COMPLETE"),
        ("compact", "START"), ("compact", "COMPLETE")]
    start, complete = got[0], got[1]
    assert start["run"]["runId"] == complete["run"]["runId"] != got[2]["run"]["runId"]
    expected = stream_entries(real.sync, settings)
    rows = {o["name"]: o["outputFacets"]["outputStatistics"]["rowCount"] for o in complete["outputs"]}
    assert sum(rows.values()) == sum(expected.values()) and rows["bronze_tx"] == 4
    assert {o["namespace"] for o in complete["outputs"]} == {str(lake_dir)}
    inputs = {i["name"] for i in complete["inputs"]}
    assert inputs == {stream for stream, _ in expected} and complete["inputs"][0]["namespace"] == \
        redis_namespace(real.url)
    assert any(o["name"].endswith("report.html") for o in got[3]["outputs"])


def test_a_failed_run_emits_fail(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENLINEAGE_URL", raising=False)
    monkeypatch.setenv("SHOPSTREAM_LINEAGE_FILE", str(tmp_path / "l.jsonl"))
    with pytest.raises(RuntimeError):
        with lineage(Lake(str(tmp_path / "lake")), "report"):
            raise RuntimeError("boom")
    got = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in got] == ["START", "FAIL"]


def test_events_go_to_an_http_endpoint_when_configured(tmp_path, monkeypatch):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{server.server_port}")
        with lineage(Lake(str(tmp_path / "lake")), "compact") as run:
            run.outputs = [("s3://bucket/lake", "bronze_clicks", 12)]
    finally:
        server.shutdown()
    assert [(path, body["eventType"]) for path, body in received] == [("/api/v1/lineage", "START"),
                                                                      ("/api/v1/lineage", "COMPLETE")]
    assert received[1][1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 12
    assert not (tmp_path / "lake" / "_lineage").exists()


def test_redis_namespace_drops_credentials():
    assert redis_namespace("rediss://user:secret@cache.example:6380/0") == "redis://cache.example:6380"

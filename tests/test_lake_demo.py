"""The demo's cold path: archive, dimensions and the busiest day's report, from a finished run."""

from __future__ import annotations

import pytest

pytest.importorskip("deltalake")

from shopstream.engine.lake.demo import archive_and_report, describe  # noqa: E402
from tests import lakedata  # noqa: E402
from tests.lakedata import run_engine  # noqa: E402


async def test_archive_and_report_after_a_run(real, settings, tmp_path):
    backend = real                          # one run: the wiring, not the backend, is under test
    await run_engine(backend, settings)
    (tmp_path / "lake").mkdir()
    (tmp_path / "lake" / "leftover").write_text("from an earlier demo")
    cold = archive_and_report(settings, tmp_path, client=backend.sync)
    assert not (tmp_path / "lake" / "leftover").exists()              # a fresh lake each demo
    assert cold["by_table"]["bronze_clicks"] == len(lakedata.clicks()) + 1
    assert cold["report"]["data"]["date"] == lakedata.DAY and cold["report"]["files"]["html"].exists()
    text = describe(cold)
    assert "open " in text and str(cold["report"]["files"]["html"].resolve()) in text

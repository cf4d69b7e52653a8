"""OpenLineage run events (START, COMPLETE, FAIL) of the lake's jobs: archive, compact, dims, report.

Where they go: an HTTP endpoint when OpenLineage's own configuration is set (``OPENLINEAGE_URL``
or ``OPENLINEAGE_CONFIG``, read by openlineage-python); otherwise one JSON object per line in
``SHOPSTREAM_LINEAGE_FILE``, by default ``<lake folder>/_lineage/events.jsonl``.  Datasets are
named ``<namespace>/<name>``: Redis streams under ``redis://host:port``, lake tables under the
lake's URI, report files under ``file://``.  Output datasets carry their row counts.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import output_statistics_output_dataset
from openlineage.client.transport.file import FileConfig, FileTransport

from .store import Lake

JOB_NAMESPACE = "shopstream"
PRODUCER = "https://github.com/shopstream/shopstream/engine/lake"


def client(lake: Lake) -> OpenLineageClient:
    if os.environ.get("OPENLINEAGE_URL") or os.environ.get("OPENLINEAGE_CONFIG"):
        return OpenLineageClient()
    default = None if "://" in lake.uri else os.path.join(lake.uri, "_lineage", "events.jsonl")
    path = os.environ.get("SHOPSTREAM_LINEAGE_FILE", default or "lineage.jsonl")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=path, append=True)))


class LineageRun:
    """One run of a job: the caller fills ``inputs`` ([(namespace, name)]) and ``outputs``
    ([(namespace, name, rows)]) before the run ends."""

    def __init__(self, lake: Lake, job: str):
        self.client, self.job, self.run_id = client(lake), job, str(uuid.uuid4())
        self.inputs: list[tuple[str, str]] = []
        self.outputs: list[tuple[str, str, int | None]] = []

    def emit(self, state: RunState) -> None:
        outputs = [OutputDataset(namespace=ns, name=name, outputFacets={} if rows is None else {
            "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=rows)})
            for ns, name, rows in self.outputs]
        self.client.emit(RunEvent(eventType=state, eventTime=datetime.now(timezone.utc).isoformat(),
                                  run=Run(runId=self.run_id), job=Job(namespace=JOB_NAMESPACE, name=self.job),
                                  producer=PRODUCER, inputs=[InputDataset(namespace=ns, name=name)
                                                             for ns, name in self.inputs], outputs=outputs))


@contextlib.contextmanager
def lineage(lake: Lake, job: str) -> Iterator[LineageRun]:
    """START now; COMPLETE when the block ends, FAIL (and re-raise) when it raises."""
    run = LineageRun(lake, job)
    run.emit(RunState.START)
    try:
        yield run
    except BaseException:
        run.emit(RunState.FAIL)
        raise
    run.emit(RunState.COMPLETE)


def redis_namespace(url: str | None) -> str:
    """``redis://host:port`` of a Redis URL, credentials left out."""
    if not url:
        return "redis://local"
    rest = url.split("://", 1)[-1].rsplit("@", 1)[-1]
    return "redis://" + rest.split("/", 1)[0]

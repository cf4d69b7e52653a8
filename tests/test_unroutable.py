"""No record can crash the producer or replay: a record nested 5,000 levels deep (msgspec gives up
with RecursionError) is routed by its bytes and dead-lettered by the consumer with a reason, and
every other record of the file flows."""

from __future__ import annotations

import msgspec
import pytest

from shopstream.engine import catalog, control, export
from shopstream.engine.keys import Keys
from shopstream.engine.producer import _as_bytes, kind_of, publish, read_events, replay, route

from .helpers import consume_all, event

T0 = 1_793_520_000_000_000
DEEP_CLICK = (b'{"user_id":"u1","event_type":"page_view","timestamp":"2026-11-02T08:00:00Z","extra":'
              + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}")
DEEP_ARRAY = (b'{"user_id":"u2","event_type":"page_view","timestamp":"2026-11-02T08:00:00Z","properties":'
              b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}")
GOOD = [event(f"user-{i % 7}", T0 + i * 1_000_000) for i in range(40)]


def test_route_and_kind_never_raise_on_a_deep_record():
    for raw in (DEEP_CLICK, DEEP_ARRAY):
        with pytest.raises(RecursionError):        # what crashed `shopstream run`
            msgspec.json.decode(raw)
        assert 0 <= route(raw, 16) < 16
        assert route(raw, 16) == route(raw, 16)
    assert kind_of([DEEP_CLICK, *GOOD]) == "clicks"
    assert _as_bytes(_nested(5000)).startswith(b"unencodable dict")


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("shape", ["lines", "array"])
def test_read_events_yields_every_record_of_a_file_with_a_deep_one(tmp_path, shape):
    records = [*GOOD[:20], DEEP_CLICK, *GOOD[20:], DEEP_ARRAY]
    path = tmp_path / "clicks.json"
    path.write_bytes(b"\n".join(records) if shape == "lines" else b"[" + b",\n".join(records) + b"]")
    assert list(read_events(path)) == records


async def test_deep_records_are_dead_lettered_and_the_rest_applied(backend, settings):
    await control.ensure_groups(backend.aio, settings)
    assert publish(backend.sync, [*GOOD[:20], DEEP_CLICK, *GOOD[20:], DEEP_ARRAY], settings) == 42
    await consume_all(backend, settings)
    await control.flush(backend.aio, settings)
    out = await export.collect(backend.aio, settings)
    assert sum(s["event_count"] for s in out.sessions) == len(GOOD)
    assert len(out.dlq) == 2
    for dead in out.dlq:
        assert "RecursionError" in dead["reason"] or "recursion" in dead["reason"], dead["reason"]


async def test_replay_of_a_folder_with_deep_records_everywhere(backend, settings, tmp_path):
    (tmp_path / "clickstream_events.json").write_bytes(b"[" + b",".join([*GOOD, DEEP_CLICK]) + b"]")
    (tmp_path / "product_catalog.json").write_bytes(
        b'[{"product_id":"p1","category":"shoes","name":"x","price":1},'
        b'{"product_id":"p2","category":"x","extra":' + b"[" * 5000 + b"]" * 5000 + b"}]")
    await control.ensure_groups(backend.aio, settings)
    done = replay(backend.sync, tmp_path, settings)
    assert done == {"catalog": 1, "clicks": len(GOOD) + 1}
    dlq = Keys(settings.namespace, settings.partitions).dlq
    assert [f[b"stream"] for _, f in backend.sync.xrange(dlq)] == [b"ss:catalog"]
    await consume_all(backend, settings)
    assert backend.sync.xlen(dlq) == 2


def test_catalog_load_dead_letters_a_deep_product(backend, settings):
    deep = b'{"product_id":"p9","category":"x","extra":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert catalog.load(backend.sync, [deep], settings) == (0, 1)


def test_shopstream_run_survives_a_deep_record(real_redis_url, tmp_path):
    """The reported crash: `shopstream run` on a file holding one such record."""
    import json

    from .support import shopstream
    path = tmp_path / "clicks.json"
    path.write_bytes(b"\n".join([*GOOD[:20], DEEP_CLICK, *GOOD[20:]]))
    shopstream("run", str(path), "--out", str(tmp_path / "out"), "--namespace", "deep", "--consumers", "1",
               env={"REDIS_URL": real_redis_url})
    dlq = [json.loads(line) for line in (tmp_path / "out" / "dlq.jsonl").read_text().splitlines()]
    assert len(dlq) == 1 and "RecursionError" in dlq[0]["reason"]
    sessions = [json.loads(line) for line in (tmp_path / "out" / "sessions.jsonl").read_text().splitlines()]
    assert sum(s["event_count"] for s in sessions) == len(GOOD)

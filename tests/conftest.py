"""Fixtures: one ``redis`` backend parametrized over fakeredis and a real redis-server.

The real server is started once per session on a free port.  Locally the real variant is
skipped when no ``redis-server`` binary exists; in CI (``CI`` set) that is a failure.
fakeredis's Lua lacks Redis's built-in ``cmsgpack`` library: tests/lua/cmsgpack.lua stands in.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio as aioredis

from shopstream.engine.tools.servers import embedded_cluster, embedded_redis
from shopstream.engine.settings import Settings

IN_CI = bool(os.environ.get("CI"))
LUA_MODULES = os.path.join(os.path.dirname(__file__), "lua")
os.environ["LUA_PATH"] = f"{LUA_MODULES}/?.lua;;"     # read when fakeredis creates its Lua runtime


def fake_clients() -> tuple[fakeredis.FakeRedis, fakeredis.FakeAsyncRedis]:
    """A sync and an asyncio fakeredis client of one fresh server, with cmsgpack in its Lua."""
    server = fakeredis.FakeServer()
    return (fakeredis.FakeRedis(server=server, lua_modules={"cmsgpack"}),
            fakeredis.FakeAsyncRedis(server=server, lua_modules={"cmsgpack"}))


# Files whose tests are slow as a whole (processes, kill loops, full-size inputs, hypothesis).
SLOW_FILES = {"test_bench.py", "test_crash.py", "test_properties.py", "test_rule_state_bombs.py", "test_cluster.py",
              "test_hostile.py"}
SLOW_PREFIXES = ("test_lake_",)         # Delta commits and Parquet files: a second or so each
# Files whose tests start processes or servers of their own (so: a real server, whatever fixture).
PROCESS_FILES = {"test_cli.py", "test_acl.py", "test_ops.py", "test_bench.py", "test_crash.py", "test_lake_killloop.py",
                 "test_lake_ops.py", "test_lake_report.py"}


def pytest_collection_modifyitems(items):
    """The test pyramid: each test is marked unit, lua, integration or cluster by what it uses."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        param = getattr(getattr(item, "callspec", None), "params", {}).get("backend")
        file = item.path.name
        if "redis_cluster" in names or file == "test_cluster.py":
            item.add_marker(pytest.mark.cluster)
        elif names & {"real", "real_redis_url"} or param == "real" or file in PROCESS_FILES:
            item.add_marker(pytest.mark.integration)
        elif param == "fake" or names & {"backend"}:
            item.add_marker(pytest.mark.lua)
        else:
            item.add_marker(pytest.mark.unit)
        if file in SLOW_FILES or file.startswith(SLOW_PREFIXES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def real_redis_url():
    if not shutil.which("redis-server"):
        if IN_CI:
            pytest.fail("redis-server is required in CI (install it: apt-get install -y redis-server)")
        pytest.skip("redis-server not installed")
    with embedded_redis() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster():
    """A real Redis Cluster for the session: 3 masters + 3 replicas on loopback (tests/test_cluster.py)."""
    missing = [b for b in ("redis-server", "redis-cli") if not shutil.which(b)]
    if missing:
        if IN_CI:
            pytest.fail(f"{' and '.join(missing)} required in CI (apt-get install -y redis-server)")
        pytest.skip(f"{' and '.join(missing)} not installed")
    with embedded_cluster(masters=3, replicas=1) as cluster:
        yield cluster


@dataclass
class Backend:
    kind: str
    sync: Any
    aio: Any
    url: str | None


@pytest.fixture(params=["fake", "real"])
def backend(request):
    if request.param == "fake":
        b = Backend("fake", *fake_clients(), None)
    else:
        url = request.getfixturevalue("real_redis_url")
        b = Backend("real", redis.Redis.from_url(url), aioredis.Redis.from_url(url), url)
    b.sync.flushall()
    yield b
    b.sync.flushall()
    b.sync.close()


@pytest.fixture
def real(real_redis_url):
    """A real server only (blocking reads, processes, persistence)."""
    client = redis.Redis.from_url(real_redis_url)
    client.flushall()
    yield Backend("real", client, aioredis.Redis.from_url(real_redis_url), real_redis_url)
    client.flushall()
    client.close()


@pytest.fixture
def settings() -> Settings:
    return Settings(partitions=4, heartbeat_ms=50, lease_ttl_ms=600, block_ms=20, idle_timeout_ms=0,
                    metrics_port=None, batch_size=200)

"""Fixtures: one ``redis`` backend parametrized over fakeredis and a real redis-server.

The real server is started once per session on a free port.  Locally the real variant is
skipped when no ``redis-server`` binary exists; in CI (``CI`` set) that is a failure.
fakeredis's Lua lacks Redis's built-in ``cmsgpack`` library: tests/lua/cmsgpack.lua stands in.
"""

from __future__ import annotations

import asyncio
import inspect
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


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run ``async def`` tests on a fresh event loop (no plugin needed)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**args))
        return True
    return None


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

"""Redis clients from one URL (a single Redis or any node of a Redis Cluster, detected from the
server).  The embedded redis-server and local cluster are tools: engine/tools/servers.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Awaitable, Callable

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ClusterError, NoPermissionError, RedisClusterException, TryAgainError

# Errors that mean "Redis, or the shard of a Redis Cluster, is not answering right now" (a restart,
# a failover in progress: CLUSTERDOWN, TRYAGAIN, a slot not covered yet): wait and retry.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterError, TryAgainError, RedisClusterException)


_OPTIONS = {"socket_keepalive": True, "health_check_interval": 30}


def closed_under_write(exc: BaseException) -> bool:
    """uvloop's RuntimeError for a write on a connection the server has just closed ("... the handler
    is closed", uvloop issue 506): Redis going away, like UNAVAILABLE (plain asyncio raises an OSError
    there, which redis-py turns into ConnectionError).  Any other RuntimeError is a bug."""
    return isinstance(exc, RuntimeError) and "the handler is closed" in str(exc)


def unavailable(exc: BaseException) -> bool:
    """Redis, or a shard of it, not answering right now: UNAVAILABLE, or a write on a connection it
    has just closed.  For ``except (*UNAVAILABLE, RuntimeError)`` clauses: re-raise when False."""
    return isinstance(exc, UNAVAILABLE) or closed_under_write(exc)

log = logging.getLogger(__name__)

# Waiting for Redis to come back: 0.1-0.2 s after the first failure, doubling, at most 1-2 s
# (equal jitter: half the delay is random, so consumers restarted together do not retry in step).
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.1, 2.0


class RedisServerMissing(RuntimeError):
    """No redis-server binary to start a private server with (engine/tools/servers.py)."""


def is_cluster(url: str) -> bool:
    """Is the server at ``url`` a Redis Cluster node?  ``INFO cluster`` (cluster_enabled:1), or
    ``HELLO``'s mode for users without INFO (the producer and consumer roles of ops/redis/users.acl)."""
    probe = redis.Redis.from_url(url)
    try:
        try:
            return probe.info("cluster").get("cluster_enabled") == 1
        except NoPermissionError:
            hello = probe.execute_command("HELLO")
            fields = hello if isinstance(hello, dict) else dict(zip(hello[::2], hello[1::2]))
            return fields.get(b"mode", fields.get("mode")) in (b"cluster", "cluster")
    finally:
        probe.close()


def sync_client(url: str) -> redis.Redis | redis.RedisCluster:
    """A client of ``url``: a RedisCluster client when the server is a cluster node."""
    if is_cluster(url):
        return redis.RedisCluster.from_url(url, **_OPTIONS)
    return redis.Redis.from_url(url, **_OPTIONS)


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, (redis.RedisCluster, aioredis.RedisCluster))


def async_client(url: str, retry: bool = True) -> aioredis.Redis | aioredis.RedisCluster:
    """The asyncio twin of sync_client (the mode is probed once, synchronously, at creation).

    ``retry=False``: errors surface at once instead of redis-py sending the command again (the
    consumer: a read whose reply was lost has delivered entries; it must recover those first)."""
    options = _OPTIONS if retry else {**_OPTIONS, "retry": Retry(NoBackoff(), 0)}
    if is_cluster(url):
        return aioredis.RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


def backoff_retry(retries: int = -1) -> Retry:
    """redis-py's Retry on UNAVAILABLE errors with exponential backoff; ``retries=-1``: for ever."""
    return Retry(EqualJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries, supported_errors=UNAVAILABLE)


class _Stopped(Exception):
    pass


async def retry_until_available(do: Callable[[], Awaitable[Any]], what: str, stopping: asyncio.Event | None = None,
                                retry: Retry | None = None) -> bool:
    """Call ``do()`` until Redis answers it: after an UNAVAILABLE error, log and call it again
    after a backoff (``backoff_retry``).  A plain retry: ``do`` must be safe to repeat as a whole.
    True once it succeeded; False when ``stopping`` was set (checked after each failure)."""
    async def failed(exc: Exception) -> None:
        if stopping is not None and stopping.is_set():
            raise _Stopped from exc
        log.warning("redis unavailable (%s); %s again", exc, what)

    async def attempt() -> Any:
        try:
            return await do()
        except RuntimeError as exc:
            if closed_under_write(exc):
                raise redis.ConnectionError(str(exc)) from exc
            raise

    try:
        await (retry or backoff_retry()).call_with_retry(attempt, failed)
    except _Stopped:
        return False
    return True


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"

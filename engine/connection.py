"""Redis clients from one URL, and the embedded (private) redis-server used when none is given."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

import redis
import redis.asyncio as aioredis


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_keepalive=True, health_check_interval=30)


def async_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_keepalive=True, health_check_interval=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServerMissing(RuntimeError):
    pass


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise RedisServerMissing(
            "redis-server is not installed. Install it (Debian/Ubuntu: `sudo apt-get install -y redis-server`,"
            " macOS: `brew install redis`) or point REDIS_URL at a running Redis.")
    return path


@contextmanager
def embedded_redis(*extra_args: str, port: int | None = None) -> Iterator[str]:
    """Start a private redis-server on loopback for the duration of the block; yields its URL."""
    binary = redis_server_binary()
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="shopstream-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
         "--appendonly", "no", "--protected-mode", "yes", *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for_redis(url: str, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with code {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        client.close()


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"

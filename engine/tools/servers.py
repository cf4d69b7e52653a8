"""The embedded (private) redis-server and the local Redis Cluster: used when no REDIS_URL is given
(`shopstream run`, `demo`), by `shopstream cluster`, the benchmarks and the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import redis

from ..connection import RedisServerMissing

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def redis_cli_binary() -> str:
    path = shutil.which("redis-cli")
    if not path:
        raise RedisServerMissing("redis-cli is not installed (Debian/Ubuntu: it comes with redis-server, package"
                                 " redis-tools; macOS: brew install redis)")
    return path


def _redis_cli(*args: str) -> None:
    done = subprocess.run([redis_cli_binary(), *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args[:2])} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")


@dataclass
class LocalNode:
    """One redis-server process of an embedded cluster (its port, command line and process)."""

    port: int
    args: list[str]
    proc: subprocess.Popen
    node_id: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


@dataclass
class EmbeddedCluster:
    nodes: list[LocalNode]
    workdir: str
    node_options: list[str]            # what every node is started with, after its port and directory

    @property
    def url(self) -> str:
        """Any node will do: clients discover the others."""
        return next(n for n in self.nodes if n.proc.poll() is None).url

    def masters(self) -> list[LocalNode]:
        return [n for n in self.nodes if n.proc.poll() is None and _role(n) == "master"]

    def start_node(self, port: int | None = None) -> LocalNode:
        """Start one redis-server in cluster mode, not yet part of the cluster; without a port, on
        free ones (chosen again if another process takes one before the server binds it)."""
        binary = redis_server_binary()
        for _ in range(3):
            node_port = port or free_port()
            bus = node_port + 10000 if port else free_port()
            data = tempfile.mkdtemp(prefix=f"{node_port}-", dir=self.workdir)
            args = [binary, "--port", str(node_port), "--cluster-port", str(bus), "--dir", data,
                    "--logfile", os.path.join(data, "redis.log"), *self.node_options]
            node = LocalNode(node_port, args, subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                                               stderr=subprocess.DEVNULL))
            try:
                wait_for_redis(node.url, node.proc)
                with node.client() as c:
                    if c.info("server")["process_id"] == node.proc.pid:
                        return node
            except (RuntimeError, redis.RedisError):       # exited, or never answered: kill, start again
                pass
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait()
            if port:
                break
        raise RuntimeError(f"could not start a cluster node (port {port or 'any'}); see {self.workdir}")

    def kill(self, node: LocalNode) -> None:
        """SIGKILL a node (a crash: no shutdown, no final write)."""
        node.proc.kill()
        node.proc.wait()

    def replace(self, node: LocalNode, timeout: float = 60.0) -> LocalNode:
        """Put a fresh, empty node in a dead one's place, joined as a replica of the master with the
        fewest replicas (the one promoted in the dead master's place), the dead one forgotten: what
        an operator does for a failed machine.  (Restarting the old node with its cluster config
        would let it serve its old slots, empty, until it learns it was replaced.)"""
        live = [n for n in self.nodes if n is not node and n.proc.poll() is None]
        masters = [n for n in live if _role(n) == "master"]
        heir = min(masters, key=lambda m: sum(_master_port(n) == m.port for n in live))
        for other in live:
            with other.client() as c:
                c.cluster("forget", node.node_id)
        fresh = self.start_node()
        self.nodes[self.nodes.index(node)] = fresh     # from here on, the block's end stops it
        fresh.node_id = _node_id(fresh)
        deadline = time.monotonic() + timeout
        with fresh.client() as c:
            # CLUSTER MEET + REPLICATE rather than redis-cli --cluster add-node, which refuses while
            # the other nodes are still agreeing on the failover
            c.cluster("meet", "127.0.0.1", heir.port, heir.args[heir.args.index("--cluster-port") + 1])
            while True:
                try:
                    c.cluster("replicate", heir.node_id)
                    break
                except redis.ResponseError:          # the heir is not known here yet (gossip)
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        wait_cluster_ready(self.nodes, timeout)
        return fresh


def _master_port(node: LocalNode) -> int | None:
    with node.client() as c:
        return c.info("replication").get("master_port")


def _node_id(node: LocalNode) -> str:
    with node.client() as c:
        return c.cluster("myid").decode()


def _role(node: LocalNode) -> str:
    with node.client() as c:
        return c.info("replication")["role"]


def wait_cluster_ready(nodes: list[LocalNode], timeout: float = 60.0) -> None:
    """Until every node says cluster_state:ok and knows every other one, and every master's
    replicas acknowledge a write (WAIT): a replica can report its link up while its master has
    not started streaming to it yet, and writes of that moment would not survive a failover."""
    deadline = time.monotonic() + timeout
    while True:
        problems = []
        live = [n for n in nodes if n.proc.poll() is None]
        replicas_of: dict[int, int] = {}
        for node in live:
            try:
                with node.client() as c:
                    info = c.cluster("info")
                    repl = c.info("replication")
            except redis.RedisError as exc:
                problems.append(f"{node.port}: {exc}")
                continue
            if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(nodes):
                problems.append(f"{node.port}: cluster_state {info.get('cluster_state')}, knows "
                                f"{info.get('cluster_known_nodes')} of {len(nodes)} nodes")
            elif repl["role"] == "slave":
                replicas_of[repl["master_port"]] = replicas_of.get(repl["master_port"], 0) + 1
        for port, count in replicas_of.items():
            try:
                streaming = not problems and _replicas_acknowledge(port, count)
            except redis.RedisError:
                streaming = False
            if not streaming:
                problems.append(f"{port}: {count} replica(s) not streaming yet")
        if not problems:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not become ready: " + "; ".join(problems))
        time.sleep(0.05)


def _replicas_acknowledge(port: int, count: int) -> bool:
    """Write a key of one of the master's slots, WAIT for count replicas, delete it."""
    with redis.Redis(port=port, socket_timeout=5) as c:
        for i in range(10_000):
            key = f"shopstream-ready:{i}"
            try:
                c.set(key, 1)
            except redis.exceptions.MovedError:      # not this master's slot: try the next key
                continue
            acknowledged = c.wait(count, 100)
            c.delete(key)
            return acknowledged >= count
    return False


@contextmanager
def embedded_cluster(masters: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2000,
                     extra_args: Sequence[str] = (), base_port: int | None = None) -> Iterator[EmbeddedCluster]:
    """Start a Redis Cluster of masters x (1 + replicas) redis-server processes on loopback for the
    block: ``redis-server --cluster-enabled yes`` each, joined by ``redis-cli --cluster create``.
    Ports: free ones, or base_port, base_port + 1, ... (cluster bus: port + 10000).  A master is
    declared failed after node_timeout_ms without an answer, then its replica takes over."""
    redis_server_binary()
    redis_cli_binary()                                   # both fail early, saying what to install
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes",
               "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
               "--cluster-node-timeout", str(node_timeout_ms), "--repl-diskless-sync-delay", "0", *extra_args]
    cluster = EmbeddedCluster([], tempfile.mkdtemp(prefix="shopstream-cluster-"), options)
    try:
        for i in range(masters * (1 + replicas)):
            cluster.nodes.append(cluster.start_node(base_port + i if base_port else None))
        _redis_cli("--cluster", "create", *(f"127.0.0.1:{n.port}" for n in cluster.nodes),
                   "--cluster-replicas", str(replicas), "--cluster-yes")
        for node in cluster.nodes:
            node.node_id = _node_id(node)
        wait_cluster_ready(cluster.nodes)
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in cluster.nodes:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
        shutil.rmtree(cluster.workdir, ignore_errors=True)

"""Local Redis for the commands that start their own: the private redis-server of ``shopstream run``
and ``demo`` (when no REDIS_URL is set), and the foreground Redis Cluster of ``shopstream cluster``."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Iterator

from ..connection import sync_client
from ..keys import Keys
from ..layout import describe, partitions_by_master
from ..settings import Settings
from .servers import embedded_cluster, embedded_redis


@contextlib.contextmanager
def redis_for_run(settings: Settings) -> Iterator[Settings]:
    """REDIS_URL when given; otherwise a private redis-server for the run (the embedded default)."""
    if settings.redis_url:
        yield settings
        return
    with embedded_redis() as url:
        print(f"started a private redis-server for this run at {url} (set REDIS_URL to use your own)")
        yield settings.replace(redis_url=url)


def hold_cluster(masters: int, replicas: int, port: int, settings: Settings) -> None:
    """Run a Redis Cluster in the foreground, print its URL and partition layout, stop on Ctrl-C
    (or SIGTERM), deleting its data."""
    with embedded_cluster(masters, replicas, base_port=port or None) as cluster:
        client = sync_client(cluster.url)
        ports = ", ".join(str(n.port) for n in cluster.nodes)
        print(f"Redis Cluster up: {masters} masters, {replicas} replica(s) each, on 127.0.0.1 ports "
              f"{ports}\n\n  export REDIS_URL={cluster.url}\n\nany node's URL will do. {settings.partitions} "
              f"partitions over the masters:")
        print("\n".join(describe(partitions_by_master(client, Keys(settings.namespace, settings.partitions)))))
        print("\nCtrl-C stops the cluster and deletes its data.", flush=True)
        client.close()
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping the cluster")

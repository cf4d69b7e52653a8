"""Where the partitions live on a Redis Cluster: partition -> hash slot -> master.

A partition's keys all carry its hash tag, so the whole partition is one slot,
``key_slot("{p}")`` = CRC16 of the decimal number mod 16384, and the master serving that
slot serves the partition.  Which master that is depends only on the cluster's slot ranges.
"""

from __future__ import annotations

from typing import Any

from .connection import is_cluster_client
from .keys import Keys

SINGLE_NODE = "single node"


def partitions_by_master(client: Any, keys: Keys) -> dict[str, list[int]]:
    """``host:port`` of each master -> the partitions it serves (a sync client; one entry on a
    single Redis).  Masters serving none of the partitions are listed with an empty list."""
    if not is_cluster_client(client):
        return {SINGLE_NODE: list(range(keys.partitions))}
    out: dict[str, list[int]] = {node.name: [] for node in client.get_primaries()}
    for part in keys.all_partitions():
        out.setdefault(client.get_node_from_key(part.prefix).name, []).append(part.p)
    return dict(sorted(out.items()))


def describe(layout: dict[str, list[int]]) -> list[str]:
    """One line per master: how many partitions, which; then the spread (busiest / mean)."""
    counts = [len(ps) for ps in layout.values()]
    lines = [f"  {name:<21} {len(ps):>3} partitions: {' '.join(map(str, ps))}" for name, ps in layout.items()]
    if len(layout) > 1:
        mean = sum(counts) / len(counts)
        lines.append(f"  busiest master holds {max(counts) / mean:.2f}x the mean ({min(counts)}..{max(counts)} "
                     f"partitions per master)")
    return lines

"""Which partitions a consumer should own, given the live members (pure).

Members are sorted by name; member i of n owns partitions p with p mod n == i.  Every
consumer computes the same answer from the same membership, so a join, leave or death
moves only what has to move once leases are released or expire.
"""

from __future__ import annotations

from typing import Iterable


def assigned(members: Iterable[str], me: str, partitions: int) -> set[int]:
    ordered = sorted(set(members) | {me})
    i, n = ordered.index(me), len(ordered)
    return {p for p in range(partitions) if p % n == i}

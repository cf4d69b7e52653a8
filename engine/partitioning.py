"""Which partition a user belongs to: a pure, documented function.

    partition(user_id) = crc32(utf8(user_id)) mod partitions

CRC-32 is the IEEE 802.3 polynomial (zlib.crc32, Java's java.util.zip.CRC32, Go's
hash/crc32.ChecksumIEEE), so producers in any language agree.  The id is hashed
byte-exact: "A15", " A15" and "a15" are three users and may land in three partitions.
"""

from __future__ import annotations

import zlib


def partition_of(user_id: str, partitions: int) -> int:
    return zlib.crc32(user_id.encode("utf-8")) % partitions


def partition_of_bytes(raw: bytes, partitions: int) -> int:
    """Partition for a record whose user id cannot be read (it goes to the DLQ from there)."""
    return zlib.crc32(raw) % partitions

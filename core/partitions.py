"""Which partition a user belongs to, and the Redis Cluster hash tag of each partition.

Every key and channel of a partition carries the partition's hash tag, so a partition's
ingest stream, markers, feed streams and live channels share one cluster slot: its Lua
scripts and pipelines touch one node, and sharded pub/sub (SPUBLISH) stays on that node.

Both rules name keys forever and are frozen (tests pin their values):

- a user's partition is the jump consistent hash (Lamping and Veach) of the first 8 bytes
  of the user id's BLAKE2b digest, so it never depends on Python's per-process `hash()`;
  and when N grows, only about 1/N of the users move;
- partition p of N gets the first tag `p.k` (k = 0, 1, ...) whose CRC16 slot falls in the
  p-th of N equal slice of the 16384 slots. Naive tags `0..N-1` hash to arbitrary slots
  and pile partitions onto few nodes (centrifuge's issue #554); evenly spaced slots give
  every primary of a cluster whose slots were split evenly an equal share.

On a standalone Redis the tags are inert: the same names, the same code path.
"""

from __future__ import annotations

import functools
import hashlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Finding a tag takes about N CRC16 tries, so N partitions cost N² at start: 256 -> 0.1 s.
MAX_PARTITIONS = 256


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash of a 64-bit `key` into `buckets` (arXiv:1406.2294)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def user_key(user: str) -> int:
    return int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "big")


def slot_range(partition: int, partitions: int) -> range:
    start = partition * REDIS_CLUSTER_HASH_SLOTS // partitions
    end = (partition + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
    return range(start, end)


def find_tag(partition: int, partitions: int) -> str:
    want = slot_range(partition, partitions)
    k = 0
    while True:
        tag = f"{partition}.{k}"
        if key_slot(tag.encode()) in want:
            return tag
        k += 1


class Partitioner:
    """The partitions of one deployment (`LIVEFEED_PARTITIONS`)."""

    __slots__ = ("count", "tags", "_of")

    def __init__(self, count: int) -> None:
        if not 1 <= count <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}, not {count}")
        self.count = count
        self.tags: tuple[str, ...] = tuple(find_tag(p, count) for p in range(count))
        self._of = functools.lru_cache(maxsize=65536)(self._compute)

    def _compute(self, user: str) -> int:
        return jump_hash(user_key(user), self.count)

    def of(self, user: str) -> int:
        """The partition of `user`."""
        return self._of(user)

    def tag_of(self, user: str) -> str:
        return self.tags[self._of(user)]

    def __repr__(self) -> str:
        return f"Partitioner({self.count})"

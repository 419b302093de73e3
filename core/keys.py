"""Every Redis key, channel and group name livefeed uses is built here and nowhere else.

Keys are partitioned (`LIVEFEED_PARTITIONS`): a user belongs to one partition (see
`core.partitions`), and every key and channel of a partition carries the partition's
Redis Cluster hash tag, `{p.k}`:

    lf:{3.0}:ingest                 the partition's ingest stream
    lf:{3.0}:seen:<user>:<event id> idempotency marker of an accepted event
    lf:{3.0}:feed:<user>            the user's feed stream
    lf:{3.0}:live:<user>            the user's live channel (SPUBLISH on a cluster)
    lf:{3.0}:fanned:<user>:<id>     fanout's idempotency marker (holds the feed id)
    lf:{3.0}:dead                   dead letters of the partition's entries
    lf:{3.0}:lease:<group>          which consumer of <group> owns the partition

so a partition's scripts and pipelines touch one slot, one node. Group member sets
(`lf:members:<group>`) and SSE connect tickets (`lf:ticket:<ticket>`, one key each, taken
with GETDEL) are the only keys outside the partitions. On a standalone Redis the
tags are inert: the same names, the same code. The names depend on N: changing
LIVEFEED_PARTITIONS is a migration (docs/design.md), never a silent rename.
"""

from __future__ import annotations

from typing import Final

from livefeed.core.partitions import Partitioner

PERSIST_GROUP: Final = "persist"
FANOUT_GROUP: Final = "fanout"
GROUPS: Final = (PERSIST_GROUP, FANOUT_GROUP)
DEFAULT_PARTITIONS: Final = 16

_PARTITIONERS: dict[int, Partitioner] = {}


def partitioner(count: int) -> Partitioner:
    """One Partitioner per count and process (its tags take ~count² CRC16s to find)."""
    found = _PARTITIONERS.get(count)
    if found is None:
        found = _PARTITIONERS[count] = Partitioner(count)
    return found


class Keys:
    """Key names under one prefix (`LIVEFEED_PREFIX`, default `lf`) and partition count."""

    __slots__ = ("prefix", "partitions", "_heads", "ingests", "deads")

    def __init__(self, prefix: str = "lf", *, partitions: int = DEFAULT_PARTITIONS) -> None:
        if not prefix or any(c in prefix for c in "{}* "):
            raise ValueError(f"LIVEFEED_PREFIX={prefix!r}: use letters, digits, ':' '-' '_' only")
        self.prefix = prefix
        self.partitions = partitioner(partitions)
        self._heads = tuple(f"{prefix}:{{{tag}}}:" for tag in self.partitions.tags)
        self.ingests = tuple(f"{head}ingest" for head in self._heads)
        self.deads = tuple(f"{head}dead" for head in self._heads)

    @property
    def count(self) -> int:
        return self.partitions.count

    def partition_of(self, user: str) -> int:
        return self.partitions.of(user)

    def _head(self, user: str) -> str:
        return self._heads[self.partitions.of(user)]

    def ingest(self, partition: int) -> str:
        return self.ingests[partition]

    def ingest_of(self, user: str) -> str:
        return self.ingests[self.partitions.of(user)]

    def dead(self, partition: int) -> str:
        return self.deads[partition]

    def dead_of(self, user: str) -> str:
        return self.deads[self.partitions.of(user)]

    def seen(self, user: str, event_id: str) -> str:
        return f"{self._head(user)}seen:{user}:{event_id}"

    def feed(self, user: str) -> str:
        return f"{self._head(user)}feed:{user}"

    def live(self, user: str) -> str:
        return f"{self._head(user)}live:{user}"

    def fanned(self, user: str, event_id: str) -> str:
        return f"{self._head(user)}fanned:{user}:{event_id}"

    def lease(self, partition: int, group: str) -> str:
        return f"{self._heads[partition]}lease:{group}"

    def members(self, group: str) -> str:
        return f"{self.prefix}:members:{group}"

    def ticket(self, ticket: str) -> str:
        """An SSE connect ticket (`POST /v1/tickets`): one key, taken with GETDEL."""
        return f"{self.prefix}:ticket:{ticket}"

    def partition_of_key(self, key: str | bytes) -> int:
        """The partition of an ingest or dead-letter stream name."""
        name = key.decode() if isinstance(key, bytes) else key
        for i, head in enumerate(self._heads):
            if name.startswith(head):
                return i
        raise ValueError(f"not a partition key of prefix {self.prefix!r}: {name!r}")

    def user_of_live(self, channel: str | bytes) -> str:
        """The user a `live` channel belongs to (inverse of `live`)."""
        return self._user_of(channel, "live:")

    def user_of_feed(self, key: str | bytes) -> str:
        return self._user_of(key, "feed:")

    def _user_of(self, name: str | bytes, kind: str) -> str:
        text = name.decode() if isinstance(name, bytes) else name
        head, sep, user = text.partition(f"}}:{kind}")
        if sep and user and text == self.live(user).replace("live:", kind, 1):
            return user
        raise ValueError(f"not a {kind[:-1]} name of prefix {self.prefix!r}: {text!r}")

    @property
    def live_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:live:*"

    @property
    def feed_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:feed:*"

    def patterns(self) -> tuple[str, ...]:
        """SCAN patterns matching every key of this prefix (tests and `compare` clean up)."""
        return (f"{self.prefix}:*",)

"""Every Redis key, channel and group name livefeed uses is built here and nowhere else.

`{user}` in the per-user names is also the Redis Cluster hash tag, so a user's feed
stream, live channel and fanout markers share one slot. In cluster mode the ingest-side
names (ingest stream, seen markers, dead letters) share the hash tag `{prefix}`, so the
ingest script can touch the stream and the marker atomically (a seen marker names its
user in braces too, after the prefix's tag: only the first braces are the hash tag).
"""

from __future__ import annotations

from typing import Final

PERSIST_GROUP: Final = "persist"
FANOUT_GROUP: Final = "fanout"
GROUPS: Final = (PERSIST_GROUP, FANOUT_GROUP)


class Keys:
    """Key names under one prefix (`LIVEFEED_PREFIX`, default `lf`)."""

    __slots__ = ("prefix", "cluster", "_ing", "ingest", "dead", "live_pattern", "feed_pattern")

    def __init__(self, prefix: str = "lf", *, cluster: bool = False) -> None:
        if not prefix or any(c in prefix for c in "{}* "):
            raise ValueError(f"LIVEFEED_PREFIX={prefix!r}: use letters, digits, ':' '-' '_' only")
        self.prefix = prefix
        self.cluster = cluster
        self._ing = f"{{{prefix}}}" if cluster else prefix
        self.ingest = f"{self._ing}:ingest"
        self.dead = f"{self._ing}:dead"
        self.live_pattern = f"{prefix}:live:*"
        self.feed_pattern = f"{prefix}:feed:*"

    def seen(self, user: str, event_id: str) -> str:
        """The dedupe marker of event `event_id` of `user` (ids are scoped per user)."""
        return f"{self._ing}:seen:{{{user}}}:{event_id}"

    def feed(self, user: str) -> str:
        return f"{self.prefix}:feed:{{{user}}}"

    def live(self, user: str) -> str:
        return f"{self.prefix}:live:{{{user}}}"

    def fanned(self, user: str, event_id: str) -> str:
        return f"{self.prefix}:fanned:{{{user}}}:{event_id}"

    def user_of_live(self, channel: str | bytes) -> str:
        """The user a `live` channel belongs to (inverse of `live`)."""
        name = channel.decode() if isinstance(channel, bytes) else channel
        head = f"{self.prefix}:live:{{"
        if not (name.startswith(head) and name.endswith("}")):
            raise ValueError(f"not a live channel of prefix {self.prefix!r}: {name!r}")
        return name[len(head) : -1]

    def user_of_feed(self, key: str | bytes) -> str:
        name = key.decode() if isinstance(key, bytes) else key
        head = f"{self.prefix}:feed:{{"
        if not (name.startswith(head) and name.endswith("}")):
            raise ValueError(f"not a feed stream of prefix {self.prefix!r}: {name!r}")
        return name[len(head) : -1]

    def patterns(self) -> tuple[str, ...]:
        """SCAN patterns matching every key of this prefix (tests and `compare` clean up)."""
        own = f"{self.prefix}:*"
        return (own, f"{{{self.prefix}}}:*") if self.cluster else (own,)

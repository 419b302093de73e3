"""Ingest stream retention: trim only what every consumer group has acknowledged.

The safe MINID is the minimum over groups of (oldest pending id, else last-delivered id):
everything below it was delivered to every group and acked by it. Entries that a group
has not read yet, or read and not acked, are never trimmed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from livefeed.core.eventlog import parse_stream_id
from livefeed.core.groupstream import ensure_group
from livefeed.core.keys import GROUPS, Keys
from livefeed.core.redis_client import RedisClient

logger = logging.getLogger(__name__)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def safe_minid(redis: RedisClient, keys: Keys, partition: int,
                     groups: Sequence[str] = GROUPS) -> str | None:
    """The lowest id of `partition`'s ingest stream any of `groups` still needs, or None if
    a group is missing."""
    stream = keys.ingest(partition)
    info = {_s(g["name"]): g for g in await redis.xinfo_groups(stream)}
    lowest: tuple[int, int] | None = None
    for group in groups:
        if group not in info:
            return None
        summary = await redis.xpending(stream, group)
        if summary.get("pending"):
            needed = _s(summary["min"])
        else:
            # Everything up to last-delivered is acked; the next unread entry is above it.
            needed = _s(info[group]["last-delivered-id"])
        parsed = parse_stream_id(needed)
        assert parsed is not None, needed
        if lowest is None or parsed < lowest:
            lowest = parsed
    if lowest is None:
        return None
    return f"{lowest[0]}-{lowest[1]}"


async def trim_acked(redis: RedisClient, keys: Keys, partition: int,
                     groups: Sequence[str] = GROUPS, *, approximate: bool = True) -> int:
    """XTRIM MINID `partition`'s ingest stream below what every group has acked; returns
    entries removed. Creates missing groups first (at id 0), so an absent group cannot
    make its unread entries look trimmable."""
    stream = keys.ingest(partition)
    for group in groups:
        await ensure_group(redis, stream, group)
    minid = await safe_minid(redis, keys, partition, groups)
    if minid is None or minid == "0-0":
        return 0
    # `~` trims whole radix-tree nodes only: never more than asked, far cheaper.
    return int(await redis.xtrim(stream, minid=minid, approximate=approximate))

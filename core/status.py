"""Status views of one prefix: the ingest and dead-letter streams, groups, feeds.

Used by the operator CLI, the admin API and the stream gauges alike. Works on Redis 6.2,
whose XINFO GROUPS has no `lag` (it is counted here), and on Redis 7 (whose `lag` is nil
after deletions inside the group's range, counted the same way then).
"""

from __future__ import annotations

from typing import Any

from livefeed.core.keys import Keys
from livefeed.core.redis_client import RedisClient
from livefeed.schemas.admin import ConsumerView, GroupView, StatusView, StreamView

# Counting lag by XRANGE reads the entries; past this many the count is a lower bound.
LAG_COUNT_CAP = 10_000
_PAGE = 500
FEED_SAMPLE = 10


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def group_names(redis: RedisClient, key: str) -> list[str]:
    """The consumer groups of stream `key` (none if the stream does not exist)."""
    if not await redis.exists(key):
        return []
    return [_s(g["name"]) for g in await redis.xinfo_groups(key)]


class Status:
    """Read-only views of one prefix's streams and groups."""

    def __init__(self, redis: RedisClient, keys: Keys, *, feed_sample: int = FEED_SAMPLE) -> None:
        self.redis = redis
        self.keys = keys
        self.feed_sample = feed_sample

    async def now_ms(self) -> int:
        """Redis' clock: ids and idle times are Redis' too, the caller's clock may differ."""
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def stream(self, name: str, key: str) -> StreamView:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(key)
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
        pipe.exists(key)
        length, first, last, exists = await pipe.execute()
        groups = len(await self.redis.xinfo_groups(key)) if exists else 0
        return StreamView(
            name=name, key=key, length=int(length),
            first_id=_s(first[0][0]) if first else None,
            last_id=_s(last[0][0]) if last else None,
            groups=groups,
        )

    async def groups(self, key: str | None = None, now_ms: int | None = None) -> list[GroupView]:
        key = key or self.keys.ingest
        if not await self.redis.exists(key):
            return []
        now_ms = now_ms if now_ms is not None else await self.now_ms()
        infos = await self.redis.xinfo_groups(key)
        stream = await self.stream("ingest", key)
        return [await self._group(key, info, stream, now_ms) for info in infos]

    async def _group(self, key: str, info: dict[str, Any], stream: StreamView,
                     now_ms: int) -> GroupView:
        name = _s(info["name"])
        last_delivered = _s(info["last-delivered-id"])
        consumers = [
            ConsumerView(name=_s(c["name"]), pending=int(c["pending"]), idle_ms=int(c["idle"]))
            for c in await self.redis.xinfo_consumers(key, name)
        ]
        lag, exact = await self._lag(key, info.get("lag"), last_delivered, stream)
        oldest_id = oldest_age = oldest_idle = None
        if int(info["pending"]):
            summary = await self.redis.xpending(key, name)
            if summary["min"] is not None:
                oldest_id = _s(summary["min"])
                oldest_age = max(0, now_ms - _id_tuple(oldest_id)[0])
                rows = await self.redis.xpending_range(key, name, min=oldest_id, max=oldest_id,
                                                       count=1)
                if rows:
                    oldest_idle = int(rows[0]["time_since_delivered"])
        return GroupView(
            stream=key, name=name, consumers=consumers, pending=int(info["pending"]),
            lag=lag, lag_exact=exact, last_delivered_id=last_delivered,
            oldest_pending_id=oldest_id, oldest_pending_age_ms=oldest_age,
            oldest_pending_idle_ms=oldest_idle,
        )

    async def _lag(self, key: str, reported: Any, last_delivered: str,
                   stream: StreamView) -> tuple[int | None, bool]:
        if reported is not None:
            return int(reported), True
        if stream.length == 0 or stream.last_id is None or stream.first_id is None:
            return 0, True
        delivered = _id_tuple(last_delivered)
        if delivered >= _id_tuple(stream.last_id):
            return 0, True
        if delivered < _id_tuple(stream.first_id):
            return stream.length, True
        count, start = 0, f"({last_delivered}"
        while count < LAG_COUNT_CAP:
            rows = await self.redis.xrange(key, min=start, count=_PAGE) or []
            count += len(rows)
            last = rows[-1][0] if rows else None
            if len(rows) < _PAGE or last is None:  # XRANGE never answers a nil id
                return count, True
            start = f"({_s(last)}"
        return count, False

    async def feeds(self) -> tuple[list[StreamView], bool]:
        """Up to `feed_sample` feed streams, and whether there are more."""
        found: list[str] = []
        cursor: Any = 0
        more = False
        for _ in range(1000):  # bound the walk over a huge keyspace
            cursor, batch = await self.redis.scan(cursor, match=self.keys.feed_pattern,
                                                  count=500)
            for k in batch:
                if len(found) < self.feed_sample:
                    found.append(_s(k))
                else:
                    more = True
            if more or int(cursor) == 0:
                break
        found.sort()
        return [await self.stream("feed", k) for k in found], more

    async def status(self) -> StatusView:
        now = await self.now_ms()
        info = await self.redis.info("server")
        streams = [await self.stream("ingest", self.keys.ingest),
                   await self.stream("dead", self.keys.dead)]
        feeds, more = await self.feeds()
        return StatusView(
            redis_version=str(info.get("redis_version", "?")),
            server_time_ms=now,
            streams=streams,
            groups=await self.groups(now_ms=now),
            feeds=feeds,
            feeds_more=more,
        )


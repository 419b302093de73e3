"""Status views of one prefix: the ingest and dead-letter streams, groups, feeds, per
partition (with each group's lease holder) and in total.

Used by the operator CLI, the admin API and the stream gauges alike. Works on Redis 6.2,
whose XINFO GROUPS has no `lag` (it is counted here), and on Redis 7 (whose `lag` is nil
after deletions inside the group's range, counted the same way then).
"""

from __future__ import annotations

from typing import Any

from livefeed.core.groupstream import ref
from livefeed.core.keys import Keys
from livefeed.core.leases import owners
from livefeed.core.redis_client import RedisClient
from livefeed.schemas.admin import (
    ConsumerView,
    GroupView,
    OwnerView,
    PartitionView,
    StatusView,
    StreamView,
)

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

    async def groups(self, key: str, now_ms: int | None = None) -> list[GroupView]:
        """The groups of one ingest stream."""
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

    async def partition_groups(self, now_ms: int) -> list[list[GroupView]]:
        """Each partition's groups (empty where its stream does not exist yet)."""
        return [await self.groups(key, now_ms) for key in self.keys.ingests]

    async def status(self) -> StatusView:
        now = await self.now_ms()
        info = await self.redis.info("server")
        ingests = [await self.stream("ingest", k) for k in self.keys.ingests]
        deads = [await self.stream("dead", k) for k in self.keys.deads]
        per_partition = await self.partition_groups(now)
        feeds, more = await self.feeds()
        partitions = []
        held = {g: await owners(self.redis, self.keys, g)
                for g in sorted({g.name for gs in per_partition for g in gs})}
        for p, (ingest, dead, groups) in enumerate(zip(ingests, deads, per_partition,
                                                       strict=True)):
            views = []
            for g in groups:
                holder, left = held.get(g.name, {}).get(p, (None, None))
                views.append(OwnerView(group=g.name, holder=holder, lease_left_ms=left,
                                       pending=g.pending, lag=g.lag))
            partitions.append(PartitionView(partition=p, tag=self.keys.partitions.tags[p],
                                            ingest_length=ingest.length,
                                            dead_length=dead.length, owners=views))
        return StatusView(
            redis_version=str(info.get("redis_version", "?")),
            server_time_ms=now,
            streams=[total_stream("ingest", f"{self.keys.prefix}:{{*}}:ingest", ingests),
                     total_stream("dead", f"{self.keys.prefix}:{{*}}:dead", deads)],
            groups=total_groups(per_partition),
            feeds=feeds,
            feeds_more=more,
            partitions=partitions,
        )


def total_stream(name: str, key: str, parts: list[StreamView]) -> StreamView:
    """The partitions' streams (`parts[p]` is partition p's) as one: ids are refs
    (`<partition>/<stream id>`: a stream id alone does not say which stream holds it)."""
    firsts = [(s.first_id, p) for p, s in enumerate(parts) if s.first_id]
    lasts = [(s.last_id, p) for p, s in enumerate(parts) if s.last_id]
    first = min(firsts, key=lambda f: _id_tuple(f[0])) if firsts else None
    last = max(lasts, key=lambda f: _id_tuple(f[0])) if lasts else None
    return StreamView(name=name, key=key, length=sum(s.length for s in parts),
                      first_id=ref(first[1], first[0]) if first else None,
                      last_id=ref(last[1], last[0]) if last else None,
                      groups=max((s.groups for s in parts), default=0))


def total_groups(per_partition: list[list[GroupView]]) -> list[GroupView]:
    """One view per group over all partitions (`per_partition[p]` is partition p's):
    sums, the oldest pending entry and the latest delivered one as refs, each consumer's
    pending total and its least idle time."""
    by_name: dict[str, list[tuple[int, GroupView]]] = {}
    for p, groups in enumerate(per_partition):
        for g in groups:
            by_name.setdefault(g.name, []).append((p, g))
    out = []
    for name, placed in by_name.items():
        views = [g for _, g in placed]
        consumers: dict[str, ConsumerView] = {}
        for g in views:
            for c in g.consumers:
                seen = consumers.get(c.name)
                consumers[c.name] = c if seen is None else ConsumerView(
                    name=c.name, pending=seen.pending + c.pending,
                    idle_ms=min(seen.idle_ms, c.idle_ms))
        oldest = [(p, g) for p, g in placed if g.oldest_pending_id is not None]
        first = min(oldest, key=lambda pg: _id_tuple(pg[1].oldest_pending_id or "0-0"),
                    default=None)
        latest = max(placed, key=lambda pg: _id_tuple(pg[1].last_delivered_id))
        lags = [g.lag for g in views]
        out.append(GroupView(
            stream="*", name=name, consumers=sorted(consumers.values(), key=lambda c: c.name),
            pending=sum(g.pending for g in views),
            lag=None if any(lag is None for lag in lags) else sum(lag or 0 for lag in lags),
            lag_exact=all(g.lag_exact for g in views),
            last_delivered_id=ref(latest[0], latest[1].last_delivered_id),
            oldest_pending_id=(ref(first[0], first[1].oldest_pending_id or "")
                               if first else None),
            oldest_pending_age_ms=first[1].oldest_pending_age_ms if first else None,
            oldest_pending_idle_ms=first[1].oldest_pending_idle_ms if first else None,
        ))
    return out

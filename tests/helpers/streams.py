"""Entries in a prefix's streams as the pipeline leaves them: ingested events, consumer
groups, stale pending entries of a dead consumer, dead letters. Operators name entries
and dead letters by refs (`<partition>/<stream id>`, `ref()`)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import anyio
import pytest

from livefeed.core import deadletters
from livefeed.core.eventlog import EventLog
from livefeed.core.groupstream import ref, split_ref
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.schemas.event import Event, encode_event

# Run a test on the shared Redis 7 and on the embedded Redis 6.2 (the `any_redis_url` and
# `r` fixtures of tests/core/conftest.py; fixture params do not reach anyio-run tests).
both = pytest.mark.parametrize("any_redis_url", ["redis7", "redis6.2"], indirect=True)


def event(user: str = "alice", subject: str = "Weekly digest") -> Event:
    return Event(id=uuid.uuid4(), user_id=user, subject=subject, sender="news@example.com",
                 received_at=dt.datetime.now(dt.UTC))


def log_of(r: Any, keys: Keys) -> EventLog:
    return EventLog(r, keys, feed_maxlen=100, dedupe_ttl_s=60)


async def ingest(r: Any, keys: Keys, n: int, user: str = "alice") -> list[str]:
    """Append `n` events of `user`; their stream ids (in `keys.ingest_of(user)`)."""
    events = [event(user, f"Issue {i}") for i in range(n)]
    done = await log_of(r, keys).append([(str(e.id), e.user_id, encode_event(e))
                                         for e in events])
    return [a.stream_id for a in done if a.stream_id]


async def groups(r: Any, keys: Keys) -> None:
    """Both groups on every partition's ingest stream."""
    for stream in keys.ingests:
        for g in (PERSIST_GROUP, FANOUT_GROUP):
            await r.xgroup_create(stream, g, id="0", mkstream=True)


async def make_stale(r: Any, keys: Keys, group: str, consumer: str, idle_ms: int) -> None:
    """Backdate the pending entries of `consumer`, as if it died `idle_ms` ago."""
    for stream in keys.ingests:
        rows = await r.xpending_range(stream, group, min="-", max="+", count=1000,
                                      consumername=consumer)
        ids = [row["message_id"] for row in rows]
        if ids:
            await r.xclaim(stream, group, consumer, 0, ids, idle=idle_ms, justid=True)


async def wait_consumer_idle(r: Any, keys: Keys, group: str, consumer: str, ms: int) -> None:
    with anyio.fail_after(30):
        while True:
            for stream in keys.ingests:
                if not await r.exists(stream):
                    continue
                infos = await r.xinfo_consumers(stream, group)
                if any(c["name"].decode() == consumer and c["idle"] >= ms for c in infos):
                    return
            await anyio.sleep(0.05)


async def bury(r: Any, keys: Keys, data: bytes, *, error: str = "boom",
               group: str = PERSIST_GROUP, source_id: str = "0/1-1",
               entry: dict[bytes, bytes] | None = None) -> str:
    """A dead letter written exactly as the group runner writes one (with the ack of its
    ingest entry `source_id`, a ref, whose fields are `entry`: by default a malformed one,
    only `data`); its dead-letter ref."""
    letter = deadletters.letter_of(source_id, entry or {b"data": data}, group=group,
                                   consumer="persist-1", error=error, deliveries=5)
    await deadletters.bury(r, keys, group, [letter], maxlen=1000)
    partition = split_ref(source_id)[0]
    rows = await r.xrevrange(keys.dead(partition), count=1)
    return ref(partition, rows[0][0].decode())


async def poisoned(r: Any, keys: Keys, subject: str = "Poison") -> tuple[str, str, bytes]:
    """An event accepted by ingest (seen marker set), then given up on by a group."""
    ev = event("bob", subject)
    data = encode_event(ev)
    [appended] = await log_of(r, keys).append([(str(ev.id), ev.user_id, data)])
    assert appended.stream_id is not None
    partition = keys.partition_of(ev.user_id)
    entry = {b"event_id": str(ev.id).encode(), b"user": ev.user_id.encode(), b"data": data}
    dead_id = await bury(r, keys, data, error="ValueError: bad sender",
                         source_id=ref(partition, appended.stream_id), entry=entry)
    # as if trimmed after the ack
    await r.xdel(keys.ingest(partition), appended.stream_id)
    return dead_id, str(ev.id), data


async def ingest_rows(r: Any, keys: Keys) -> list[tuple[str, dict[bytes, bytes]]]:
    """Every partition's ingest entries as (ref, fields), in append order (entries of one
    millisecond in different partitions ordered by partition)."""
    rows: list[tuple[tuple[int, int, int], str, dict[bytes, bytes]]] = []
    for partition, stream in enumerate(keys.ingests):
        for sid, fields in await r.xrange(stream):
            text = sid.decode()
            ms, _, seq = text.partition("-")
            rows.append(((int(ms), int(seq), partition), ref(partition, text), fields))
    return [(entry_ref, fields) for _, entry_ref, fields in sorted(rows)]


async def ingest_length(r: Any, keys: Keys) -> int:
    """Entries in all partitions' ingest streams (0 where none exists)."""
    return sum([int(await r.xlen(stream)) for stream in keys.ingests])


async def pending_total(r: Any, keys: Keys, group: str) -> int:
    """Entries pending in `group` over every partition (XPENDING where the stream exists;
    a stream without the group yet has none pending in it: `all_read` tells it unread)."""
    from redis.exceptions import ResponseError  # (appended helpers: imports kept local)

    total = 0
    for stream in keys.ingests:
        if not await r.exists(stream):
            continue
        try:
            total += int((await r.xpending(stream, group))["pending"])
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
    return total


async def all_read(r: Any, keys: Keys, group: str) -> bool:
    """Every existing partition stream's `group` was delivered up to the stream's newest
    entry (Redis 6.2 has no `lag`): last-delivered-id == newest id, the group present
    wherever the stream holds entries."""
    for stream in keys.ingests:
        if not await r.exists(stream):
            continue
        newest = await r.xrevrange(stream, count=1)
        if not newest:
            continue
        found = [g for g in await r.xinfo_groups(stream) if g["name"] == group.encode()]
        if not found or found[0]["last-delivered-id"] != newest[0][0]:
            return False
    return True


async def dead_rows(r: Any, keys: Keys) -> list[tuple[str, dict[bytes, bytes]]]:
    """Every partition's dead letters as (ref, fields), in partition order, oldest first
    within a partition."""
    return [(ref(partition, sid.decode()), fields)
            for partition, stream in enumerate(keys.deads)
            for sid, fields in await r.xrange(stream)]


def refs(keys: Keys, user: str, stream_ids: list[str]) -> list[str]:
    """The refs of `user`'s ingest entries `stream_ids` (as `ingest` returns them), the
    names operator views (pending, claim, status) give those entries."""
    partition = keys.partition_of(user)
    return [ref(partition, sid) for sid in stream_ids]

"""Entries in a prefix's streams as the pipeline leaves them: ingested events, consumer
groups, stale pending entries of a dead consumer, dead letters."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import msgspec
import pytest

from livefeed.core.eventlog import EventLog
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.schemas.admin import DeadLetter
from livefeed.schemas.event import Event, encode_event

# Run a test on the shared Redis 7 and on the embedded Redis 6.2 (the `any_redis_url` and
# `r` fixtures of tests/core/conftest.py; fixture params do not reach anyio-run tests).
both = pytest.mark.parametrize("any_redis_url", ["redis7", "redis6.2"], indirect=True)


def event(user: str = "alice", subject: str = "Weekly digest") -> Event:
    return Event(id=uuid.uuid4(), user_id=user, subject=subject, sender="news@example.com",
                 received_at=dt.datetime.now(dt.UTC))


async def ingest(r: Any, keys: Keys, n: int, user: str = "alice") -> list[str]:
    log = EventLog(r, keys, feed_maxlen=100, dedupe_ttl_s=60)
    events = [event(user, f"Issue {i}") for i in range(n)]
    done = await log.append([(str(e.id), e.user_id, encode_event(e)) for e in events])
    return [a.stream_id for a in done if a.stream_id]


async def groups(r: Any, keys: Keys) -> None:
    for g in (PERSIST_GROUP, FANOUT_GROUP):
        await r.xgroup_create(keys.ingest, g, id="0", mkstream=True)


async def make_stale(r: Any, keys: Keys, group: str, consumer: str, idle_ms: int) -> None:
    """Backdate the pending entries of `consumer`, as if it died `idle_ms` ago."""
    rows = await r.xpending_range(keys.ingest, group, min="-", max="+", count=1000,
                                  consumername=consumer)
    ids = [row["message_id"] for row in rows]
    await r.xclaim(keys.ingest, group, consumer, 0, ids, idle=idle_ms, justid=True)


def log_of(r: Any, keys: Keys) -> EventLog:
    return EventLog(r, keys, feed_maxlen=100, dedupe_ttl_s=60)


async def bury(r: Any, keys: Keys, data: bytes, *, error: str = "boom",
               group: str = PERSIST_GROUP, source_id: str = "1-1") -> str:
    """A dead letter exactly as the group runner writes one (the DeadLetter fields)."""
    letter = DeadLetter(source_id=source_id, group=group, consumer="persist-1", error=error,
                        deliveries=5, data=data.decode(), failed_at_ms=int(time.time() * 1000))
    fields = msgspec.to_builtins(letter)
    sid = await r.xadd(keys.dead, {k: str(v) for k, v in fields.items()})
    return str(sid.decode())


async def poisoned(r: Any, keys: Keys, subject: str = "Poison") -> tuple[str, str, bytes]:
    """An event accepted by ingest (seen marker set), then given up on by a group."""
    ev = event("bob", subject)
    data = encode_event(ev)
    [appended] = await log_of(r, keys).append([(str(ev.id), ev.user_id, data)])
    assert appended.stream_id is not None
    dead_id = await bury(r, keys, data, error="ValueError: bad sender",
                         source_id=appended.stream_id)
    await r.xdel(keys.ingest, appended.stream_id)  # as if trimmed after the ack
    return dead_id, str(ev.id), data

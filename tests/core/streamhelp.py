"""Helpers of the tests that read streams and groups: events in the ingest stream, the
two groups, stale pending entries. Runs on either Redis (see `both`)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import anyio
import pytest

from livefeed.core.eventlog import EventLog
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.schemas.event import Event, encode_event

# Every Redis test runs on both servers (fixture params do not reach anyio-run tests).
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


async def wait_consumer_idle(r: Any, keys: Keys, group: str, consumer: str, ms: int) -> None:
    with anyio.fail_after(30):
        while True:
            infos = await r.xinfo_consumers(keys.ingest, group)
            if any(c["name"].decode() == consumer and c["idle"] >= ms for c in infos):
                return
            await anyio.sleep(0.05)

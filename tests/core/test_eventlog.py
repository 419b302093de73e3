"""The event log against the real Redis: idempotent append, idempotent fanout, resume."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from livefeed.core.eventlog import EventLog, NotReplicated
from livefeed.core.keys import Keys
from livefeed.schemas.frames import event_frame


def make_log(redis: Any, keys: Keys, maxlen: int = 100) -> EventLog:
    return EventLog(redis, keys, feed_maxlen=maxlen, dedupe_ttl_s=60)


async def test_append_is_idempotent_on_event_id(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    first = await log.append([("e1", "alice", b"{}"), ("e2", "bob", b"{}")])
    assert all(a.stream_id for a in first)
    again = await log.append([("e2", "bob", b"{}"), ("e3", "bob", b"{}")])
    assert again[0].stream_id is None and again[1].stream_id is not None
    assert keys.partition_of("alice") != keys.partition_of("bob")
    alice = await redis.xrange(keys.ingest_of("alice"))
    bob = await redis.xrange(keys.ingest_of("bob"))
    assert [r[1][b"event_id"] for r in alice] == [b"e1"] and alice[0][1][b"user"] == b"alice"
    assert [r[1][b"event_id"] for r in bob] == [b"e2", b"e3"]
    # Ids are scoped per user: the same id for another user is another event.
    other = await log.append([("e1", "bob", b"{}")])
    assert other[0].stream_id is not None


async def test_append_waits_for_replicas_when_asked(redis: Any, keys: Keys) -> None:
    # The test Redis has no replica: WAIT 1 times out, the append is not acknowledged.
    log = EventLog(redis, keys, feed_maxlen=100, dedupe_ttl_s=60, replicas=1)
    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        await log.append([("r1", "alice", b"{}")])
    # ...but it is in the stream, so a retry is a duplicate (and is refused the same way).
    assert len(await redis.xrange(keys.ingest_of("alice"))) == 1
    with pytest.raises(NotReplicated):
        await log.append([("r1", "alice", b"{}")])


async def test_one_request_spans_partitions_in_one_call(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    users = [f"user{i}" for i in range(50)]
    events = [(f"e{i}", u, b"{}") for i, u in enumerate(users)]
    appended = await log.append(events)
    assert [a.event_id for a in appended] == [e[0] for e in events]
    assert len({keys.partition_of(u) for u in users}) == 16
    for (eid, user, _), a in zip(events, appended, strict=True):
        rows = await redis.xrange(keys.ingest_of(user), min=a.stream_id, max=a.stream_id)
        assert rows[0][1][b"event_id"].decode() == eid


async def test_fan_out_appends_and_publishes_once(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.live("alice"))
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    done = await log.fan_out([("e1", "alice", b'{"n":1}'), ("e2", "alice", b'{"n":2}')])
    assert [f.new for f in done] == [True, True]
    redo = await log.fan_out([("e1", "alice", b'{"n":1}')])
    assert redo[0] == (done[0].feed_id, False)
    assert await redis.xlen(keys.feed("alice")) == 2
    got = []
    with anyio.move_on_after(2):
        while len(got) < 3:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg:
                got.append(msg["data"])
    assert got == [
        event_frame(done[0].feed_id, b'{"n":1}'),
        event_frame(done[1].feed_id, b'{"n":2}'),
    ]
    await pubsub.aclose()


async def test_feed_is_bounded(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys, maxlen=10)
    await log.fan_out([(f"e{i}", "u", b"{}") for i in range(500)])
    # MAXLEN ~ trims whole nodes: bounded near maxlen, never below it
    assert 10 <= await redis.xlen(keys.feed("u")) <= 200


async def test_resume_replays_strictly_after_last_id(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    fanned = await log.fan_out([(f"e{i}", "u", str(i).encode()) for i in range(5)])
    ids = [f.feed_id for f in fanned]
    page = await log.resume("u", ids[1], count=2)
    assert page.problem is None and [e.feed_id for e in page.entries] == ids[2:4]
    assert [e.feed_id for e in await log.read_feed("u", ids[3], 10)] == ids[4:]
    assert (await log.resume("u", ids[4], 10)).entries == []
    assert await log.last_feed_id("u") == ids[4]


async def test_resume_reports_why_it_cannot(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys, maxlen=10)
    assert (await log.resume("nobody", "1-0", 10)).problem == "stream_lost"
    fanned = await log.fan_out([(f"e{i}", "u", b"{}") for i in range(300)])
    await redis.xtrim(keys.feed("u"), maxlen=10)
    assert (await log.resume("u", fanned[0].feed_id, 10)).problem == "trimmed"
    assert (await log.resume("u", "99999999999999-0", 10)).problem == "unknown_id"
    assert (await log.resume("u", "garbage", 10)).problem == "unknown_id"

"""The event log against the real Redis: idempotent append, idempotent fanout, resume."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from livefeed.core import redis_client
from livefeed.core.eventlog import (
    FEED_START,
    EventLog,
    IdConflict,
    NotReplicated,
    content_digest,
)
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
    assert await redis.get(keys.seen("bob", "e2")) == content_digest(b"{}").encode()
    assert 0 < await redis.ttl(keys.seen("bob", "e2")) <= 60


async def test_event_ids_are_scoped_per_user(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    first = await log.append([("e1", "alice", b'{"a":1}')])
    other = await log.append([("e1", "bob", b'{"b":2}')])
    assert first[0].stream_id and other[0].stream_id
    rows = [*await redis.xrange(keys.ingest_of("alice")),
            *await redis.xrange(keys.ingest_of("bob"))]
    assert [(f[b"event_id"], f[b"user"], f[b"data"]) for _, f in rows] == [
        (b"e1", b"alice", b'{"a":1}'), (b"e1", b"bob", b'{"b":2}')]


async def test_the_same_event_twice_in_one_append_is_one_entry(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    done = await log.append([("e1", "alice", b"{}"), ("e2", "alice", b"{}"),
                             ("e1", "alice", b"{}")])
    assert [a.event_id for a in done] == ["e1", "e2", "e1"]
    assert done[0].stream_id and done[1].stream_id and done[2].stream_id is None
    assert await redis.xlen(keys.ingest_of("alice")) == 2


async def test_a_reused_id_with_other_content_appends_nothing(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    await log.append([("e1", "alice", b'{"v":1}')])
    # against an earlier append: the whole call is refused, its new events too
    with pytest.raises(IdConflict) as caught:
        await log.append([("e2", "alice", b"{}"), ("e1", "alice", b'{"v":2}')])
    assert (caught.value.index, caught.value.event_id, caught.value.user) == (1, "e1", "alice")
    # within one call
    with pytest.raises(IdConflict) as caught:
        await log.append([("e3", "bob", b"{}"), ("e4", "bob", b'{"v":1}'),
                          ("e4", "bob", b'{"v":2}')])
    assert (caught.value.index, caught.value.event_id) == (2, "e4")
    assert [f[b"event_id"] for _, f in await redis.xrange(keys.ingest_of("alice"))] == [b"e1"]
    assert await redis.xlen(keys.ingest_of("bob")) == 0
    for user, eid in (("alice", "e2"), ("bob", "e3"), ("bob", "e4")):
        assert await redis.exists(keys.seen(user, eid)) == 0
    assert await redis.get(keys.seen("alice", "e1")) == content_digest(b'{"v":1}').encode()
    # the first content is still a duplicate, not a conflict
    assert (await log.append([("e1", "alice", b'{"v":1}')]))[0].stream_id is None


async def test_after_the_dedupe_window_a_reused_id_is_a_new_entry(
    redis: Any, keys: Keys
) -> None:
    log = make_log(redis, keys)
    await log.append([("e1", "alice", b'{"v":1}')])
    await redis.delete(keys.seen("alice", "e1"))  # what the window's expiry does
    again = await log.append([("e1", "alice", b'{"v":2}')])
    assert again[0].stream_id is not None
    rows = await redis.xrange(keys.ingest_of("alice"))
    assert [f[b"data"] for _, f in rows] == [b'{"v":1}', b'{"v":2}']

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
    got: list[bytes] = []
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


async def test_another_content_under_a_fanned_id_is_a_new_version(
    redis: Any, keys: Keys
) -> None:
    """A reuse of (user, id) accepted after the dedupe window reaches the feed and the live
    channel even while the first version's fanned marker is still set."""
    log = make_log(redis, keys)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.live("alice"))
    await pubsub.get_message(timeout=1)
    [first] = await log.fan_out([("e1", "alice", b'{"v":1}')])
    [second] = await log.fan_out([("e1", "alice", b'{"v":2}')])
    assert second.new and second.feed_id != first.feed_id
    assert await log.fan_out([("e1", "alice", b'{"v":2}')]) == [(second.feed_id, False)]
    assert [data for _, data in await log.read_feed("alice", "0", 10)] == [b'{"v":1}', b'{"v":2}']
    got = []
    with anyio.move_on_after(2):
        while len(got) < 3:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg:
                got.append(msg["data"])
    assert got == [event_frame(first.feed_id, b'{"v":1}'),
                   event_frame(second.feed_id, b'{"v":2}')]
    await pubsub.aclose()
    # a marker written before markers kept a digest (the feed id alone): the same event
    await redis.set(keys.fanned("alice", "e2"), "5-0")
    assert await log.fan_out([("e2", "alice", b"{}")]) == [("5-0", False)]


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
    assert page.problem is None and [fid for fid, _ in page.entries] == ids[2:4]
    assert [fid for fid, _ in await log.read_feed("u", ids[3], 10)] == ids[4:]
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


@pytest.mark.parametrize("server", ["redis7", "redis6.2"])
async def test_resume_from_the_start(request: pytest.FixtureRequest, redis_url: str,
                                     keys: Keys, server: str) -> None:
    """FEED_START (given to clients of an empty feed) replays the whole feed while nothing
    was removed from its head; Redis 6.2 cannot tell, so it always answers `trimmed`."""
    url = redis_url if server == "redis7" else request.getfixturevalue("redis62_url")
    r = redis_client.connect(url)
    try:
        log = make_log(r, keys, maxlen=10)
        exact = int(str((await r.info("server"))["redis_version"]).split(".")[0]) >= 7
        assert exact == (server == "redis7")
        assert await log.resume("u", FEED_START, 10) == ([], None)  # nothing written yet
        ids = [f.feed_id for f in await log.fan_out([(f"e{i}", "u", b"{}") for i in range(5)])]
        whole = await log.resume("u", FEED_START, 3)
        assert whole == (([], "trimmed") if not exact else
                         ([(i, b"{}") for i in ids[:3]], None))
        assert (await log.resume("u", "0", 10)).problem == whole.problem  # the same id
        # Trimmed from the head (MAXLEN, or any deletion): the start is gone.
        await log.fan_out([(f"e{i}", "u", b"{}") for i in range(5, 300)])
        assert await r.xlen(keys.feed("u")) < 300
        assert await log.resume("u", FEED_START, 10) == ([], "trimmed")
        ids = [f.feed_id for f in await log.fan_out([("x1", "v", b"{}"), ("x2", "v", b"{}")])]
        await r.xdel(keys.feed("v"), ids[1])  # not the head, but the feed lost an entry
        assert await log.resume("v", FEED_START, 10) == ([], "trimmed")
    finally:
        await redis_client.delete_keys(r, keys)
        await r.aclose()


async def test_replay_pages_read_entries_as_redis_sent_them(redis: Any, keys: Keys) -> None:
    log = EventLog(redis, keys, feed_maxlen=100, dedupe_ttl_s=60)
    fanned = await log.fan_out([("e1", "alice", b'{"n":1}'), ("e2", "alice", b'{"n":2}')])
    # An entry written by hand with another field first is still read by its `data`.
    odd = (await redis.xadd(keys.feed("alice"), {"note": "x", "data": b'{"n":3}'})).decode()
    ids = [f.feed_id for f in fanned] + [odd]
    assert await log.read_feed("alice", "0-0", 10) == [
        (ids[0], b'{"n":1}'), (ids[1], b'{"n":2}'), (odd, b'{"n":3}')]
    resumed = await log.resume("alice", ids[0], 10)
    assert resumed.problem is None and [fid for fid, _ in resumed.entries] == ids[1:]
    assert (await log.resume("alice", FEED_START, 1)).entries == [(ids[0], b'{"n":1}')]
    # The parsing is skipped for these reads only: the shared client's XRANGE is as before.
    assert (await redis.xrange(keys.feed("alice"), count=1))[0][1] == {b"data": b'{"n":1}'}

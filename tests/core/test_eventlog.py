"""The event log against the real Redis: idempotent append, idempotent fanout, resume."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from livefeed.core import redis_client
from livefeed.core.eventlog import FEED_START, EventLog, FeedEntry
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
    rows = await redis.xrange(keys.ingest)
    assert [r[1][b"event_id"] for r in rows] == [b"e1", b"e2", b"e3"]
    assert rows[0][1][b"user"] == b"alice"


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
                         ([FeedEntry(i, b"{}") for i in ids[:3]], None))
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

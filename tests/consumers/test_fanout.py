"""The fanout consumer against the real Redis: feeds, live frames, idempotent redelivery."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import anyio

from livefeed.consumers.fanout import FanoutHandler
from livefeed.core import redis_client
from livefeed.core.embedded import EmbeddedRedis
from livefeed.core.eventlog import EventLog
from livefeed.core.groups import GroupRunner, RunnerConfig
from livefeed.core.groupstream import Entry, ensure_group
from livefeed.core.keys import FANOUT_GROUP, Keys
from livefeed.schemas.event import Event, decode_event, encode_event
from livefeed.schemas.frames import EventFrame, decode_frame
from livefeed.schemas.stream import IngestEntry
from tests.helpers.streams import all_read, dead_rows, pending_total
from tests.helpers.waiting import eventually


def event(i: int, user: str) -> Event:
    return Event(id=uuid.uuid4(), user_id=user, subject=f"Digest #{i}",
                 sender="news@example.com", received_at=dt.datetime.now(dt.UTC))


def make_log(redis: Any, keys: Keys) -> EventLog:
    return EventLog(redis, keys, feed_maxlen=1000, dedupe_ttl_s=60)


async def run_until_settled(redis: Any, keys: Keys, log: EventLog, dead: int = 0) -> None:
    runner = GroupRunner(redis, keys, FANOUT_GROUP, FanoutHandler(log), consumer="f1",
                         config=RunnerConfig(batch_size=20, block_ms=50, claim_idle_ms=150,
                                             max_deliveries=1, trim_every_s=None))

    async def settled() -> bool:
        # over every partition: nothing pending, delivered up to each newest entry
        return bool(await pending_total(redis, keys, FANOUT_GROUP) == 0
                    and await all_read(redis, keys, FANOUT_GROUP)
                    and len(await dead_rows(redis, keys)) == dead)

    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, stopping)
        await eventually(settled, what="every entry fanned out or dead")
        stopping.set()


def feed_event_ids(rows: list[Any]) -> list[str]:
    return [str(decode_event(fields[b"data"]).id) for _, fields in rows]


async def test_each_event_reaches_its_users_feed_and_channel_once(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    await ensure_group(redis, keys.ingest_of("alice"), FANOUT_GROUP)
    events = [event(i, f"u{i % 3}") for i in range(60)]
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.live("u0"))
    await pubsub.get_message(timeout=1)
    await log.append([IngestEntry.of(e) for e in events])
    await run_until_settled(redis, keys, log)
    for u in ("u0", "u1", "u2"):
        got = feed_event_ids(await redis.xrange(keys.feed(u)))
        assert got == [str(e.id) for e in events if e.user_id == u]
    frames = []
    with anyio.move_on_after(2):
        while len(frames) < 21:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg:
                frames.append(decode_frame(msg["data"]))
    await pubsub.aclose()
    assert all(isinstance(f, EventFrame) for f in frames)
    feed_ids = [i.decode() for i, _ in await redis.xrange(keys.feed("u0"))]
    assert [f.id for f in frames if isinstance(f, EventFrame)] == feed_ids  # 20, once each


async def test_redelivered_entries_are_not_fanned_out_twice(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    events = [event(i, "alice") for i in range(5)]
    handler = FanoutHandler(log)
    entries = [Entry(f"1-{i}", str(e.id), e.user_id, encode_event(e))
               for i, e in enumerate(events)]
    assert await handler.handle(entries) == {}
    assert await handler.handle(entries[2:]) == {}  # e.g. the ack was lost, then claimed
    assert feed_event_ids(await redis.xrange(keys.feed("alice"))) == [str(e.id) for e in events]


async def test_poison_entries_are_isolated(redis: Any, keys: Keys) -> None:
    log = make_log(redis, keys)
    await ensure_group(redis, keys.ingest_of("alice"), FANOUT_GROUP)
    good = [event(i, "alice") for i in range(4)]
    await log.append([IngestEntry.of(e) for e in good[:2]])
    await redis.xadd(keys.ingest_of("alice"),
                     {"event_id": "x", "user": "alice", "data": b"not json"})
    # a key of the wrong type makes this user's fanout script fail: only this entry
    await redis.set(keys.feed("broken"), "a string, not a stream")
    wrong = event(9, "broken")
    await log.append([(str(wrong.id), "broken", encode_event(wrong))])
    await log.append([IngestEntry.of(e) for e in good[2:]])
    await run_until_settled(redis, keys, log, dead=2)
    assert feed_event_ids(await redis.xrange(keys.feed("alice"))) == [str(e.id) for e in good]
    errors = {f[b"event_id"]: f[b"error"] for _, f in await dead_rows(redis, keys)}
    assert errors[b"x"].startswith(b"undecodable payload")
    assert b"WRONGTYPE" in errors[str(wrong.id).encode()]


async def test_fan_out_loads_its_script_when_the_server_lacks_it(tmp_path: Path) -> None:
    """fan_out sends EVALSHA without a SCRIPT EXISTS round trip first; a server without the
    script (fresh, restarted or flushed: here an embedded one) gets it loaded."""
    with EmbeddedRedis(tmp_path, persist=False) as server:
        client = redis_client.connect(server.url)
        try:
            log = make_log(client, Keys("nos"))
            [first] = await log.fan_out([("e1", "alice", b'{"n":1}')])
            await client.script_flush()
            again = await log.fan_out([("e1", "alice", b'{"n":1}'), ("e2", "alice", b"{}")])
            assert first.new and again[0] == (first.feed_id, False) and again[1].new
            assert await client.xlen(Keys("nos").feed("alice")) == 2
            stats = await client.info("commandstats")  # 6.2: `script`; 7: `script|load`...
            scripting = sum(v["calls"] for k, v in stats.items()
                            if k.startswith("cmdstat_script"))
            assert scripting == 3  # LOAD, our FLUSH, LOAD: no SCRIPT EXISTS per batch
        finally:
            await client.aclose()

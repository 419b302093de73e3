"""A rolling upgrade: a newer gateway adds a field to the event; today's consumers, reading
the ingest stream it writes, persist and fan out its events instead of dead-lettering them."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest

from livefeed.consumers.fanout import FanoutHandler
from livefeed.consumers.persist import PersistHandler
from livefeed.core.eventlog import EventLog
from livefeed.core.groups import GroupRunner, RunnerConfig
from livefeed.core.groupstream import ensure_group
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.schemas.event import Event, decode_ingest_body, encode_event
from livefeed.schemas.frames import EventFrame, decode_frame
from tests.helpers.streams import dead_rows

pytestmark = pytest.mark.anyio


def newer_payload(i: int) -> tuple[str, bytes]:
    """The JSON a newer gateway writes: today's fields plus ones this version lacks."""
    eid = uuid.uuid4()
    today = Event(id=eid, user_id="alice", subject=f"Digest #{i}", sender="news@example.com",
                  received_at=dt.datetime.now(dt.UTC), category="news")
    fields = msgspec.json.decode(encode_event(today))
    fields.update({"priority": i, "labels": ["a", "b"], "thread": {"id": f"t{i}"}})
    return str(eid), msgspec.json.encode(fields)


async def test_events_with_unknown_fields_are_persisted_and_fanned_out(
    redis: Any, keys: Keys, pool: asyncpg.Pool
) -> None:
    log = EventLog(redis, keys, feed_maxlen=100, dedupe_ttl_s=60)
    for group in (PERSIST_GROUP, FANOUT_GROUP):
        await ensure_group(redis, keys.ingest_of("alice"), group)
    sent = [newer_payload(i) for i in range(5)]
    # The HTTP body of today's gateway stays strict: an unknown field there is a typo.
    with pytest.raises(msgspec.ValidationError, match="priority"):
        decode_ingest_body(sent[0][1])
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.live("alice"))
    await pubsub.get_message(timeout=1)
    await log.append([(eid, "alice", data) for eid, data in sent])

    config = RunnerConfig(batch_size=10, block_ms=50, claim_idle_ms=300, max_deliveries=1,
                          trim_every_s=None)
    runners = [GroupRunner(redis, keys, PERSIST_GROUP, PersistHandler(pool), consumer="old-p",
                           config=config),
               GroupRunner(redis, keys, FANOUT_GROUP, FanoutHandler(log), consumer="old-f",
                           config=config)]
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        for runner in runners:
            tg.start_soon(runner.run, stopping)
        with anyio.fail_after(30):
            # Until both groups are done, or one dead-lettered something (the old failure).
            while not await dead_rows(redis, keys) and (
                    await pool.fetchval("SELECT count(*) FROM newsletters") < len(sent)
                    or await redis.xlen(keys.feed("alice")) < len(sent)):
                await anyio.sleep(0.05)
        stopping.set()

    assert [f[b"error"] for _, f in await dead_rows(redis, keys)] == []
    rows = await pool.fetch("SELECT id, subject, category FROM newsletters")
    assert {str(r["id"]) for r in rows} == {eid for eid, _ in sent}
    assert {r["category"] for r in rows} == {"news"}
    # Clients get the payload as the newer gateway wrote it, new fields included.
    feed = [fields[b"data"] for _, fields in await redis.xrange(keys.feed("alice"))]
    assert feed == [data for _, data in sent]
    frames = []
    with anyio.move_on_after(5):
        while len(frames) < len(sent):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg:
                frames.append(decode_frame(msg["data"]))
    await pubsub.aclose()
    assert [bytes(f.data) for f in frames if isinstance(f, EventFrame)] == feed

"""Event ids scoped per user, across the pipeline: after the dedupe window a reuse of
(user, id) is a new version, and the ingest answer, the row and the feed agree on it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import httpx
import msgspec
import pytest

from livefeed.consumers.fanout import FanoutHandler
from livefeed.consumers.persist import PersistHandler
from livefeed.core import auth
from livefeed.core.eventlog import EventLog
from livefeed.core.groups import GroupRunner, RunnerConfig
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.settings import Settings
from tests.gateway.livehelp import SECRET, app_client
from tests.helpers.streams import all_read, pending_total

pytestmark = pytest.mark.anyio


async def settle(redis: Any, keys: Keys, pool: asyncpg.Pool) -> None:
    """Run the persist and fanout consumers until both have handled the whole stream."""
    log = EventLog(redis, keys, feed_maxlen=100, dedupe_ttl_s=60)
    config = RunnerConfig(block_ms=50, trim_every_s=None)
    runners = [GroupRunner(redis, keys, PERSIST_GROUP, PersistHandler(pool), config=config),
               GroupRunner(redis, keys, FANOUT_GROUP, FanoutHandler(log), config=config)]
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        for runner in runners:
            tg.start_soon(runner.run, stopping)
        with anyio.fail_after(30):
            # on every partition: delivered up to the newest entry, nothing pending
            while not all([await all_read(redis, keys, name)
                           and await pending_total(redis, keys, name) == 0
                           for name in (PERSIST_GROUP, FANOUT_GROUP)]):
                await anyio.sleep(0.05)
        stopping.set()


async def test_after_the_dedupe_window_answer_row_and_feed_agree_on_the_new_version(
    settings_factory: Callable[..., Settings], redis: Any, keys: Keys, pool: asyncpg.Pool
) -> None:
    admin = {"authorization": f"Bearer {auth.mint(SECRET, 'ops', admin=True)}"}
    j = str(uuid.uuid4())
    at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).isoformat()

    def version(subject: str) -> bytes:
        return msgspec.json.encode({"id": j, "user_id": "alice", "subject": subject,
                                    "sender": "news@example.com", "received_at": at})

    async with app_client(settings_factory(secret=SECRET)) as (client, _):

        async def post(body: bytes) -> httpx.Response:
            return await client.post("/v1/events", content=body, headers=admin)

        assert (await post(version("First"))).status_code == 202
        await settle(redis, keys, pool)
        assert (await post(version("Second"))).status_code == 409  # within the window
        await redis.delete(keys.seen("alice", j))  # the window's expiry, without the wait
        r = await post(version("Second"))
        assert r.json() == {"ids": [j], "accepted": [j], "duplicates": []}
        await settle(redis, keys, pool)
        r = await post(version("Second"))  # a retry of the new version: a duplicate
        assert r.json() == {"ids": [j], "accepted": [], "duplicates": [j]}
        page = (await client.get("/v1/feed", headers={
            "authorization": f"Bearer {auth.mint(SECRET, 'alice')}"})).json()
    assert [(i["id"], i["subject"]) for i in page["items"]] == [(j, "Second")]
    feed = [msgspec.json.decode(f[b"data"]) for _, f in await redis.xrange(keys.feed("alice"))]
    assert [(e["id"], e["subject"]) for e in feed] == [(j, "First"), (j, "Second")]

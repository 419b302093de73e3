"""The pipeline under real crashes: real gateway and consumer processes, real SIGKILL."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import msgspec
import pytest

from livefeed.core import auth
from livefeed.core.embedded import free_port
from livefeed.core.eventlog import EventLog
from livefeed.core.groupstream import ensure_group
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.settings import Settings
from livefeed.ops.faultproxy import FaultProxy
from livefeed.schemas.event import Event, decode_event, encode_event
from tests.helpers.waiting import eventually
from tests.procs import Proc, running, start_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
USERS = [f"user{i}" for i in range(10)]


def events(n: int) -> list[Event]:
    now = dt.datetime.now(dt.UTC)
    return [Event(id=uuid.uuid4(), user_id=USERS[i % len(USERS)], subject=f"Digest #{i}",
                  sender="news@example.com", received_at=now) for i in range(n)]


def consumer(role: str, name: str, settings: Settings, log_dir: Path,
             *extra: str) -> Proc:
    return Proc(["consumer", role, "--name", name, *extra], settings, log_dir,
                name=f"{role}-{name}").start()


async def pending(redis: Any, keys: Keys, group: str) -> int:
    return int((await redis.xpending(keys.ingest, group))["pending"])


async def test_persist_killed_mid_run_loses_and_duplicates_nothing(
    settings_factory: Callable[..., Settings], redis: Any, keys: Keys, pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    settings = settings_factory(batch_size=200, flush_ms=100, claim_idle_ms=3000)
    sent = events(10_000)
    gateway, url = start_gateway(settings, tmp_path)
    persist = consumer("persist", "p1", settings, tmp_path)
    fanout = consumer("fanout", "f1", settings, tmp_path)
    restarted: Proc | None = None
    with running(gateway, persist, fanout):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for n, start in enumerate(range(0, len(sent), 500)):
                body = msgspec.json.encode(sent[start : start + 500])
                headers = {"x-livefeed-signature": auth.sign_body(settings.webhook_secret or "",
                                                                  body),
                           "content-type": "application/json"}
                r = await client.post("/v1/events", content=body, headers=headers)
                assert r.status_code == 202, r.text
                assert len(r.json()["accepted"]) == 500
                if n == 7:  # 4,000 in: wait for persist to be writing, then kill it

                    async def writing() -> bool:
                        return bool(await pool.fetchval("SELECT count(*) FROM newsletters"))

                    await eventually(writing, timeout=60, what="persist writing", procs=(persist,),
                                     interval=0.1)
                    persist.kill()
                if n == 13:
                    restarted = consumer("persist", "p1", settings, tmp_path)

        assert restarted is not None
        with running(restarted):

            async def drained() -> bool:
                rows = await pool.fetchval("SELECT count(*) FROM newsletters")
                return bool(rows == len(sent) and await pending(redis, keys, PERSIST_GROUP) == 0
                            and await pending(redis, keys, FANOUT_GROUP) == 0
                            and sum([await redis.xlen(keys.feed(u)) for u in USERS])
                            == len(sent))

            await eventually(drained, timeout=120, what="drained pipeline",
                             procs=(restarted, fanout), interval=0.1)
            assert restarted.terminate() == 0
            assert fanout.terminate() == 0

    got = await pool.fetch("SELECT id, stream_id FROM newsletters")
    assert len(got) == len(sent)
    assert {r["id"] for r in got} == {e.id for e in sent}
    assert len({r["stream_id"] for r in got}) == len(sent)
    for user in USERS:
        feed = [decode_event(f[b"data"]).id for _, f in await redis.xrange(keys.feed(user))]
        assert feed == [e.id for e in sent if e.user_id == user]  # each once, in order
    # both consumers left their groups cleanly: nothing pending, nobody listed but the dead
    members = {c["name"] for c in await redis.xinfo_consumers(keys.ingest, PERSIST_GROUP)}
    assert b"p1" not in members


def scrape(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(rf'^{name}{{group="persist"}} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_two_consumers_split_the_work_and_the_survivor_claims_the_dead_ones(
    settings_factory: Callable[..., Settings], redis: Any, keys: Keys, pool: asyncpg.Pool,
    database_url: str, tmp_path: Path,
) -> None:
    async with FaultProxy.for_url(database_url) as proxy:
        # Consumers reach PostgreSQL through the proxy: cut, each holds one batch pending.
        settings = settings_factory(database_url=proxy.url_for(database_url), batch_size=100,
                                    flush_ms=50, claim_idle_ms=1000)
        await ensure_group(redis, keys.ingest, PERSIST_GROUP)
        proxy.cut()
        port = free_port()
        a = consumer("persist", "a", settings, tmp_path)
        b = consumer("persist", "b", settings, tmp_path, "--metrics-port", str(port))
        with running(a, b):
            sent = events(1000)
            log = EventLog(redis, keys, feed_maxlen=100, dedupe_ttl_s=600)
            await log.append([(str(e.id), e.user_id, encode_event(e)) for e in sent])

            async def both_hold_a_batch() -> bool:
                summary = await redis.xpending(keys.ingest, PERSIST_GROUP)
                owners = {c["name"]: c["pending"] for c in summary["consumers"] or []}
                return owners.get(b"a") == 100 and owners.get(b"b") == 100

            await eventually(both_hold_a_batch, timeout=60, what="batch held by both consumers",
                             procs=(a, b), interval=0.1)
            a.kill()
            proxy.restore()

            async def drained() -> bool:
                rows = await pool.fetchval("SELECT count(*) FROM newsletters")
                return bool(rows == len(sent) and await pending(redis, keys, PERSIST_GROUP) == 0)

            await eventually(drained, timeout=90, what="everything written by b", procs=(b,),
                             interval=0.1)
            assert scrape(port, "livefeed_entries_claimed_total") >= 100
            # Waited for off the event loop: the proxy lives on it, and b's pool close waits
            # for PostgreSQL's goodbye through the proxy (a blocked loop hung it).
            assert await anyio.to_thread.run_sync(b.terminate) == 0
            assert "did not confirm the close" not in b.output()
    got = await pool.fetch("SELECT id FROM newsletters")
    assert {r["id"] for r in got} == {e.id for e in sent}
    assert await redis.xlen(keys.dead) == 0

"""The `list` mode (the article's design): a real gateway, a real list-writer process, a
real WebSocket client; and the writer's loss window under a real SIGKILL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from livefeed.core import auth
from livefeed.core.keys import Keys
from livefeed.core.settings import Settings
from livefeed.schemas.event import Event
from tests.gateway.livehelp import Gateways, WsClient, ws_url
from tests.helpers.waiting import eventually
from tests.procs import Proc, running

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def events(user: str, n: int) -> list[Event]:
    now = dt.datetime.now(dt.UTC)
    return [Event(id=uuid.uuid4(), user_id=user, subject=f"Digest #{i}",
                  sender="news@example.com", received_at=now) for i in range(n)]


async def post(client: httpx.AsyncClient, secret: str, batch: list[Event]) -> list[str]:
    body = msgspec.json.encode(batch)
    r = await client.post("/v1/events", content=body, headers={
        **auth.signature_headers(secret, body),
        "content-type": "application/json"})
    assert r.status_code == 202, r.text
    return list(r.json()["ids"])


def writer(settings: Settings, log_dir: Path, *extra: str) -> Proc:
    return Proc(["consumer", "list-writer", *extra], settings, log_dir,
                name=f"list-writer-{uuid.uuid4().hex[:4]}").start()


def has_rows(pool: asyncpg.Pool, n: int) -> Callable[[], Any]:
    async def check() -> bool:
        return len(await stored(pool)) >= n
    return check


async def stored(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT id::text AS id, count(*) AS n FROM newsletters GROUP BY id")
    return {r["id"]: int(r["n"]) for r in rows}


async def test_rows_exactly_once_and_frames_live(
    gateways: Gateways, pool: asyncpg.Pool, redis: Any, keys: Keys, tmp_path: Path,
) -> None:
    _, url = gateways.start(delivery="list")
    settings = gateways.settings_factory(delivery="list")
    secret = settings.webhook_secret or ""
    proc = writer(settings, tmp_path)
    client = await WsClient.open(ws_url(url, "ann"))
    with running(proc):
        await client.until(lambda c: "hello" in c.types(), timeout=20)
        assert client.frames[0]["mode"] == "list"
        first, second = events("ann", 150), events("bob", 30)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            ids = await post(http, secret, first) + await post(http, secret, second)
            await post(http, secret, first[:10])  # a resend: published again, one row
        # 190 items: two ticks at least (COUNT 100), the resend included.
        await eventually(has_rows(pool, len(ids)), what=f"{len(ids)} rows", procs=[proc])
        rows = await stored(pool)
        assert set(rows) == set(ids) and set(rows.values()) == {1}
        assert await redis.llen(keys.write_buffer) == 0
        # ann's client got her events live as ordinary event frames (id: the event id).
        await client.until_events(160, timeout=30)
        got = client.events()
        assert got == [str(e.id) for e in first] + [str(e.id) for e in first[:10]]
        assert all(f["data"]["user_id"] == "ann" for f in client.frames if f["type"] == "event")
    await client.close()


async def test_writer_killed_between_pop_and_commit_loses_exactly_that_batch(
    settings_factory: Callable[..., Settings], gateways: Gateways, pool: asyncpg.Pool,
    redis: Any, keys: Keys, tmp_path: Path,
) -> None:
    _, url = gateways.start(delivery="list")
    settings = settings_factory(delivery="list")
    secret = settings.webhook_secret or ""
    hold = tmp_path / "hold"
    first = writer(settings, tmp_path, "--hold-file", str(hold))
    with running(first):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            kept = await post(http, secret, events("ann", 40))
            await eventually(has_rows(pool, 40), what="40 rows", procs=[first])
            hold.touch()  # armed: the next pop waits before its INSERT
            doomed = await post(http, secret, events("ann", 60))
            await eventually(lambda: "popped 60 items" in first.tail(5000),
                             what="the held pop", procs=[first])
            first.kill()  # SIGKILL between the LMPOP and the commit
        hold.unlink()
        assert await redis.llen(keys.write_buffer) == 0  # the batch left Redis with LMPOP
        second = writer(settings, tmp_path)
        with running(second):
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                later = await post(http, secret, events("bob", 25))
            await eventually(has_rows(pool, 65), what="65 rows", procs=[second])
    rows = await stored(pool)
    assert set(rows) == set(kept) | set(later)
    assert not set(rows) & set(doomed), "the killed writer's batch is lost, all of it"


def test_cli_refuses_a_writer_that_would_never_write_or_has_partitions(tmp_path: Path) -> None:
    for flags, why in ((["--count", "0"], "must be within 1..100000"),
                       (["--interval-ms", "-5"], "must be within 1..3600000"),
                       (["--own-partitions", "0-3"], "has no partitions")):
        proc = Proc(["consumer", "list-writer", *flags], None, tmp_path).start()
        assert proc.popen is not None and proc.popen.wait(60) == 2
        assert why in proc.output()


async def test_sigterm_finishes_the_held_batch(
    gateways: Gateways, pool: asyncpg.Pool, tmp_path: Path,
) -> None:
    _, url = gateways.start(delivery="list")
    settings = gateways.settings_factory(delivery="list")
    hold = tmp_path / "hold"
    hold.touch()
    proc = writer(settings, tmp_path, "--hold-file", str(hold))
    with running(proc):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            ids = await post(http, settings.webhook_secret or "", events("ann", 30))
        await eventually(lambda: "popped 30 items" in proc.tail(5000), what="the held pop",
                         procs=[proc])
        assert proc.terminate() == 0
    assert set(await stored(pool)) == set(ids)

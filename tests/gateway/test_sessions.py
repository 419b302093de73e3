"""The per-connection machinery: the drain registry, the client watcher, the hub's watchdog.

Real Redis, a real hub, real gateway processes with real WebSocket and SSE clients.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse
from prometheus_client import REGISTRY

from livefeed.core.keys import Keys
from livefeed.gateway.hub import Hub
from livefeed.gateway.live import Session, Sessions, run_with
from livefeed.schemas.frames import CloseCode
from tests.gateway.livehelp import (
    Gateways,
    WsClient,
    assert_exact,
    make_log,
    publish,
    token,
    ws_url,
)
from tests.helpers.frames import Recorder
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.anyio


async def numsub(redis: Any, channel: str) -> int:
    return int((await redis.pubsub_numsub(channel))[0][1])


async def until_numsub(redis: Any, channel: str, want: int) -> None:
    async def reached() -> bool:
        return await numsub(redis, channel) == want

    await eventually(reached, what=f"{want} subscribers of {channel}")


def reconnects() -> float:
    return REGISTRY.get_sample_value("livefeed_pubsub_reconnects_total") or 0.0


async def test_drain_stops_sessions_even_while_blocked_on_a_stalled_client(
        redis: Any, keys: Keys, hub: Hub) -> None:
    log = make_log(redis, keys)
    sessions = Sessions()
    idle, stalled = Recorder(), Recorder()
    results: dict[str, int | None] = {}

    async def run(name: str, rec: Recorder) -> None:
        s = Session(user=name, log=log, hub=hub, transport=rec, last_id=None)
        results[name] = await run_with(s, sessions, anyio.sleep_forever)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "alice", idle)
        tg.start_soon(run, "bob", stalled)
        await idle.until(lambda r: r.types() == ["hello"])
        await stalled.until(lambda r: r.types() == ["hello"])
        stalled.stalled = True
        await publish(log, "bob", 3)
        await until_numsub(redis, keys.live("alice"), 1)
        assert len(sessions) == 2
        sessions.drain()
        await eventually(lambda: len(results) == 2, what="both sessions ended", timeout=20)
    assert results == {"alice": CloseCode.DRAINING, "bob": CloseCode.DRAINING}
    assert len(sessions) == 0
    assert hub.local_users() == 0


async def test_a_session_that_starts_after_the_drain_ends_at_once(redis: Any, keys: Keys,
                                                                  hub: Hub) -> None:
    sessions = Sessions()
    sessions.drain()
    rec = Recorder()
    s = Session(user="alice", log=make_log(redis, keys), hub=hub, transport=rec, last_id=None)
    with anyio.fail_after(10):
        assert await run_with(s, sessions, anyio.sleep_forever) == CloseCode.DRAINING
    assert rec.frames == [] and hub.local_users() == 0


async def test_a_gone_client_ends_its_session(redis: Any, keys: Keys, hub: Hub) -> None:
    gone = anyio.Event()
    rec = Recorder()
    s = Session(user="alice", log=make_log(redis, keys), hub=hub, transport=rec, last_id=None)
    result: list[int | None] = []

    async def run() -> None:
        result.append(await run_with(s, Sessions(), gone.wait))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await rec.until(lambda r: r.types() == ["hello"])
        gone.set()
        await eventually(lambda: result, what="the session's end", timeout=10)
    assert result == [None]
    assert await numsub(redis, keys.live("alice")) == 0


async def test_stop_is_consumed_but_an_outer_cancel_goes_on(redis: Any, keys: Keys,
                                                             hub: Hub) -> None:
    log = make_log(redis, keys)
    after_stop: list[int | None] = []
    rec = Recorder()
    s = Session(user="alice", log=log, hub=hub, transport=rec, last_id=None)

    async def run_then_await_more() -> None:
        code = await s.run()
        await anyio.sleep(0.05)  # the task is not left cancelled
        after_stop.append(code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_then_await_more)
        await rec.until(lambda r: r.types() == ["hello"])
        s.stop(CloseCode.DRAINING)
    assert after_stop == [CloseCode.DRAINING]

    # A plain task cancel at the same time (as uvicorn cancels a connection's task on
    # shutdown): cancelled once, by nobody who retries, so it must not be swallowed.
    reached: list[str] = []
    rec2 = Recorder()
    s2 = Session(user="bob", log=log, hub=hub, transport=rec2, last_id=None)

    async def run_and_mark() -> None:
        await s2.run()
        await asyncio.sleep(0)
        reached.append("went on")

    task = asyncio.create_task(run_and_mark())
    await rec2.until(lambda r: r.types() == ["hello"])
    s2.stop(CloseCode.DRAINING)
    task.cancel()
    await asyncio.wait([task], timeout=20)
    assert task.cancelled() and reached == []
    assert hub.local_users() == 0


class FreezingProxy:
    """TCP proxy whose `freeze()` silences the connections open at that moment (no bytes
    either way, sockets kept open: a stale link, not a dead one); new ones pass."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen: set[asyncio.StreamWriter] = set()
        self.open: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FreezingProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.open:
            w.close()
        for t in self.tasks:
            t.cancel()

    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def freeze(self) -> None:
        self.frozen |= self.open

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.open |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, writer))
            self.tasks.add(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    client: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if client in self.frozen:
                    await asyncio.sleep(3600)
                dst.write(data)
                await dst.drain()


async def test_a_silent_pubsub_link_is_replaced_and_resynced(redis_url: str, redis: Any,
                                                             keys: Keys) -> None:
    target = urlsplit(redis_url)
    log = make_log(redis, keys)
    rec = Recorder()
    before = reconnects()
    async with FreezingProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        hub = Hub(proxy.url(), keys, ping_interval_s=0.5)
        session = Session(user="alice", log=log, hub=hub, transport=rec, last_id=None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            tg.start_soon(session.run)
            await rec.until(lambda r: r.types() == ["hello"])
            first = await publish(log, "alice", 10)
            await rec.until(lambda r: len(r.events()) >= 10)
            proxy.freeze()
            # Published while the link is silent: only the feed stream delivers these.
            gap = await publish(log, "alice", 20, start=10)
            await eventually(lambda: reconnects() > before and hub.healthy,
                             what="a replaced, healthy pub/sub link")
            after = await publish(log, "alice", 5, start=30)
            await rec.until(lambda r: len(r.events()) >= 35)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
        await hub.aclose()
    assert_exact(rec.events(), first + gap + after)


@pytest.mark.slow
async def test_gateway_releases_the_channel_when_clients_leave(
        gateways: Gateways, redis: Any, keys: Keys) -> None:
    _, url = gateways.start()
    ws = await WsClient.open(ws_url(url, "alice"))  # offers permessage-deflate
    await ws.until(lambda c: c.types() == ["hello"])
    # No compression: zlib state per connection would cost ~100 KiB per idle socket.
    assert ws.conn.response is not None
    assert "sec-websocket-extensions" not in ws.conn.response.headers
    await until_numsub(redis, keys.live("alice"), 1)
    await ws.close()
    await until_numsub(redis, keys.live("alice"), 0)

    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        async with aconnect_sse(client, "GET", f"{url}/v1/sse?token={token('bob')}") as src:
            async for sse in src.aiter_sse():
                assert sse.event == "hello"
                break
            await until_numsub(redis, keys.live("bob"), 1)
    await until_numsub(redis, keys.live("bob"), 0)

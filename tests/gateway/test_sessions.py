"""The per-connection machinery: the drain registry, the client watcher, stop, the hub's
watchdog.

Real Redis, a real hub, real gateway processes with real WebSocket and SSE clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.gateway.hub import Hub
from livefeed.gateway.live import Session
from livefeed.gateway.sessions import Sessions, run_with
from livefeed.schemas.frames import CloseCode
from tests.gateway.livehelp import (
    Gateways,
    WsClient,
    assert_exact,
    bearer,
    make_log,
    numsub,
    publish,
    reconnects,
    ws_url,
)
from tests.helpers.frames import Recorder
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.anyio


async def until_numsub(redis: Any, channel: str, want: int) -> None:
    async def reached() -> bool:
        return await numsub(redis, channel) == want

    await eventually(reached, what=f"{want} subscribers of {channel}")


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


class StopInsideWaitFor(EventLog):
    """An event log whose `method` stops the session as its read completes, inside an
    `asyncio.wait_for`: how redis-py sends every command when it has a socket timeout.
    On Python 3.11 wait_for then returns the read's result and the cancel that `stop` sent
    is lost (CPython gh-86296): what made departed clients' sessions live on under load."""

    def __init__(self, redis: Any, keys: Keys, method: str, outer: bool) -> None:
        super().__init__(redis, keys, feed_maxlen=10_000, dedupe_ttl_s=600)
        self.method = method
        self.outer = outer
        self.session: Session | None = None
        self.lost: list[bool] = []

    async def _stopping(self, read: Any) -> Any:
        session_task = asyncio.current_task()
        assert session_task is not None

        async def read_then_stop() -> Any:
            result = await read
            assert self.session is not None
            self.session.stop(CloseCode.DRAINING)  # the cancel lands as this task completes
            if self.outer:
                session_task.cancel()  # and one from outside (uvicorn's, at shutdown)
            return result

        result = await asyncio.wait_for(read_then_stop(), 5)
        self.lost.append(session_task.cancelling() > 0)  # here despite the cancel: lost
        return result

    async def last_feed_id(self, user: str) -> str | None:
        read = super().last_feed_id(user)
        return await (self._stopping(read) if self.method == "last_feed_id" else read)

    async def resume(self, user: str, last_id: str, count: int) -> Any:
        read = super().resume(user, last_id, count)
        return await (self._stopping(read) if self.method == "resume" else read)


@pytest.mark.parametrize("outer", [False, True], ids=["stop", "stop+outer cancel"])
@pytest.mark.parametrize("method", ["last_feed_id", "resume"])
async def test_a_stop_whose_cancel_is_lost_still_ends_the_session(
        redis: Any, keys: Keys, hub: Hub, method: str, outer: bool) -> None:
    log = StopInsideWaitFor(redis, keys, method, outer)
    feed = await publish(log, "alice", 3)
    rec = Recorder()
    s = Session(user="alice", log=log, hub=hub, transport=rec,
                last_id=feed[0] if method == "resume" else None)
    log.session = s
    result: list[int | None] = []

    async def run_then_await_more() -> None:
        code = await s.run()
        await asyncio.sleep(0.05)  # the task is not left cancelled either
        result.append(code)

    task = asyncio.create_task(run_then_await_more())
    done, _ = await asyncio.wait([task], timeout=10)
    assert done, "the session outlived its stop"
    # The cancel from outside was lost with it, yet the task ends cancelled.
    assert (task.cancelled(), result) == ((True, []) if outer else (False, [CloseCode.DRAINING]))
    assert log.lost == ([True] if sys.version_info < (3, 12) else [])
    assert hub.local_users() == 0
    assert rec.events() == []


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
    _, url = gateways.start(hub_linger_s=0.2)  # the channel lingers that long after
    ws = await WsClient.open(ws_url(url, "alice"))  # offers permessage-deflate
    await ws.until(lambda c: c.types() == ["hello"])
    # No compression: zlib state per connection would cost ~100 KiB per idle socket.
    assert ws.conn.response is not None
    assert "sec-websocket-extensions" not in ws.conn.response.headers
    await until_numsub(redis, keys.live("alice"), 1)
    await ws.close()
    await until_numsub(redis, keys.live("alice"), 0)

    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        ticket = (await client.post(f"{url}/v1/tickets", headers=bearer("bob"))).json()
        async with aconnect_sse(client, "GET", f"{url}/v1/sse",
                                params={"ticket": ticket["ticket"]}) as src:
            async for sse in src.aiter_sse():
                assert sse.event == "hello"
                break
            await until_numsub(redis, keys.live("bob"), 1)
    await until_numsub(redis, keys.live("bob"), 0)

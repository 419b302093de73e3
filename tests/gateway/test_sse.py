"""`/v1/sse` against real gateway processes, read with httpx streaming and httpx-sse."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from livefeed.core.eventlog import FEED_START
from livefeed.core.keys import Keys
from tests.gateway.livehelp import (
    Gateways,
    assert_exact,
    bearer,
    bearer_for,
    make_log,
    publish,
    tells_an_intact_head,
    token,
)
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Streams per race test: each one publishes as soon as its response has started.
RACES = 50


class SseReader:
    """Collects server-sent events of one stream in a background task."""

    def __init__(self) -> None:
        self.events: list[ServerSentEvent] = []
        self.ended = anyio.Event()

    async def read(self, client: httpx.AsyncClient, url: str, headers: dict[str, str],
                   started: anyio.Event) -> None:
        async with aconnect_sse(client, "GET", url, headers=headers) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            started.set()
            async for sse in source.aiter_sse():
                self.events.append(sse)
        self.ended.set()

    def of(self, kind: str) -> list[ServerSentEvent]:
        return [e for e in self.events if e.event == kind]

    def ids(self) -> list[str]:
        return [e.id for e in self.of("event")]

    async def until(self, done: Callable[[SseReader], bool], timeout: float = 60) -> None:
        await eventually(lambda: done(self), what="the expected SSE events", timeout=timeout)


async def test_bad_token_is_401(gateways: Gateways) -> None:
    _, url = gateways.start()
    async with httpx.AsyncClient(timeout=10) as client:
        for bad in ("x.y.z", token("alice", ttl_s=-5)):
            r = await client.get(f"{url}/v1/sse", headers=bearer_for(bad))
            assert r.status_code == 401
        assert (await client.get(f"{url}/v1/sse")).status_code == 401
        # A good token in the URL is refused too: URLs get logged.
        r = await client.get(f"{url}/v1/sse", params={"token": token("alice")})
        assert r.status_code == 401 and "Authorization" in r.json()["error"]


@pytest.mark.parametrize("via", ["header", "query"])
async def test_last_event_id_replays_missed_events_then_live(
    gateways: Gateways, redis: Any, keys: Keys, via: str
) -> None:
    _, url = gateways.start()
    log = make_log(redis, keys)
    seen = await publish(log, "alice", 3)
    missed = await publish(log, "alice", 500, start=3)
    query = f"{url}/v1/sse"
    headers = {"last-event-id": seen[-1]} if via == "header" else {}
    headers.update(bearer("alice"))
    if via == "query":
        query += f"?last_id={seen[-1]}"
    reader = SseReader()
    started = anyio.Event()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.read, client, query, headers, started)
            await reader.until(lambda r: bool(r.of("recovered")))
            live = await publish(log, "alice", 5, start=503)
            await reader.until(lambda r: len(r.ids()) >= 505)
            tg.cancel_scope.cancel()
    assert_exact(reader.ids(), missed + live)
    assert reader.events[0].event == "hello"
    assert json.loads(reader.events[0].data) == {"type": "hello", "user": "alice",
                                                 "mode": "streams"}
    for e in reader.of("event"):
        frame = json.loads(e.data)
        assert frame["type"] == "event" and frame["id"] == e.id
        assert frame["data"]["user_id"] == "alice"
    recovered = json.loads(reader.of("recovered")[0].data)
    assert recovered == {"type": "recovered", "count": 500, "last_id": missed[-1]}


async def test_fresh_stream_gives_the_resume_point_and_sigterm_ends_it(
    gateways: Gateways, redis: Any, keys: Keys
) -> None:
    proc, url = gateways.start()
    log = make_log(redis, keys)
    old = await publish(log, "alice", 2)
    reader = SseReader()
    started = anyio.Event()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.read, client, f"{url}/v1/sse", bearer("alice"), started)
            await reader.until(lambda r: bool(r.of("hello")))
            # The hello carries the current end as its SSE id: a browser's EventSource
            # resumes from there even if it drops before its first event.
            assert reader.of("hello")[0].id == old[-1]
            new = await publish(log, "alice", 3, start=2)
            await reader.until(lambda r: len(r.ids()) >= 3)
            code = await anyio.to_thread.run_sync(proc.terminate)
            with anyio.fail_after(20):
                await reader.ended.wait()
    assert code == 0
    assert_exact(reader.ids(), new)


async def test_an_event_published_as_a_stream_opens_arrives_once(
    gateways: Gateways, redis: Any, keys: Keys
) -> None:
    """The feed's end is read before the response starts: an event published once the
    client sees the stream open is delivered, never counted as seen."""
    _, url = gateways.start()
    log = make_log(redis, keys)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        for i in range(RACES):
            user = f"u{i}"
            old = await publish(log, user, 1)
            reader = SseReader()
            started = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader.read, client, f"{url}/v1/sse", bearer(user), started)
                await started.wait()
                first = await publish(log, user, 1, start=1)
                await reader.until(lambda r: len(r.ids()) >= 1, timeout=20)
                sentinel = await publish(log, user, 1, start=2)
                await reader.until(lambda r, want=sentinel: r.ids()[-1:] == want, timeout=20)
                tg.cancel_scope.cancel()
            assert reader.of("hello")[0].id == old[-1], i
            assert_exact(reader.ids(), first + sentinel)


async def test_an_empty_feed_is_resumed_from_its_start(gateways: Gateways, redis: Any,
                                                       keys: Keys) -> None:
    _, url = gateways.start()
    log = make_log(redis, keys)
    query = f"{url}/v1/sse"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
        first = SseReader()
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.read, client, query, bearer("alice"), anyio.Event())
            await first.until(lambda r: bool(r.of("hello")))
            tg.cancel_scope.cancel()
        hello = first.of("hello")[0]
        assert hello.id == FEED_START
        assert json.loads(hello.data)["last_id"] == FEED_START

        missed = await publish(log, "alice", 4)  # before the client's first event
        again = SseReader()
        async with anyio.create_task_group() as tg:
            tg.start_soon(again.read, client, query,
                          {"last-event-id": hello.id, **bearer("alice")}, anyio.Event())
            await again.until(lambda r: bool(r.of("recovered") or r.of("reset")))
            live = await publish(log, "alice", 2, start=4)
            await again.until(lambda r: r.ids()[-1:] == live[-1:])
            tg.cancel_scope.cancel()
    if await tells_an_intact_head(redis):
        assert_exact(again.ids(), missed + live)
        assert json.loads(again.of("recovered")[0].data) == {
            "type": "recovered", "count": 4, "last_id": missed[-1]}
    else:
        reset = again.of("reset")[0]
        assert (reset.id, json.loads(reset.data)["reason"]) == (missed[-1], "trimmed")

"""`/v1/ws` against real gateway processes with the `websockets` client."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from livefeed.core import auth
from livefeed.core.eventlog import FEED_START
from livefeed.core.keys import Keys
from tests.gateway.livehelp import (
    Gateways,
    WsClient,
    assert_exact,
    make_log,
    publish,
    tells_an_intact_head,
    token,
    ws_url,
)
from tests.helpers.frames import closed_code

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Connections per race test: each one publishes as its handshake completes.
RACES = 60


@pytest.mark.parametrize("tok", ["garbage", "expired", "other-secret", "none"])
async def test_bad_token_closes_4001(gateways: Gateways, tok: str) -> None:
    _, url = gateways.start()
    value = {"garbage": "x.y.z", "expired": token("alice", ttl_s=-10),
             "other-secret": auth.mint("another-secret-" + "x" * 32, "alice"), "none": ""}[tok]
    client = await WsClient.open(ws_url(url, "alice", tok=value or "-"))
    assert await closed_code(client) == 4001


async def test_reconnect_replays_exactly_the_missed_events_then_live(
    gateways: Gateways, redis: Any, keys: Keys
) -> None:
    _, url = gateways.start()
    log = make_log(redis, keys)
    client = await WsClient.open(ws_url(url, "alice"))
    await client.until(lambda c: c.types() == ["hello"])
    first = await publish(log, "alice", 5)
    await client.until_events(5)
    assert_exact(client.events(), first)
    last = client.events()[-1]
    await client.close()

    missed = await publish(log, "alice", 500, start=5)
    again = await WsClient.open(ws_url(url, "alice", last))
    await again.until(lambda c: "recovered" in c.types())
    live = await publish(log, "alice", 10, start=505)
    await again.until_events(510)
    await again.close()
    assert_exact(again.events(), missed + live)
    types = again.types()
    assert types[0] == "hello"
    assert types.index("recovered") == 501  # hello, the 500 replayed, then recovered
    assert again.frames[501] == {"type": "recovered", "count": 500, "last_id": missed[-1]}
    # The replay went out coalesced: up to 16 frames per message (LIVEFEED_COALESCE).
    assert again.messages <= len(again.frames) // 4


@pytest.mark.parametrize("feed", ["with history", "empty"])
@pytest.mark.parametrize("via", ["header", "message"])
async def test_an_event_published_as_a_client_connects_arrives_once(
    gateways: Gateways, redis: Any, keys: Keys, feed: str, via: str
) -> None:
    """With an Authorization header the feed's end is read before the handshake
    completes: an event published right after it is delivered (live or replayed), never
    counted as seen. With an auth message, the same holds from the `hello` on. Many
    connections, since the old order lost it about once in ten."""
    _, url = gateways.start()
    log = make_log(redis, keys)
    exact = await tells_an_intact_head(redis)
    for i in range(RACES):
        user = f"u{i}"
        old = await publish(log, user, 1) if feed == "with history" else []
        client = await WsClient.open(ws_url(url, user), header=via == "header")
        if via == "message":
            await client.until(lambda c: bool(c.frames), timeout=20)
        first = await publish(log, user, 1, start=1)
        await client.until(lambda c: len(c.events()) >= 1 or "reset" in c.types(), timeout=20)
        sentinel = await publish(log, user, 1, start=2)
        await client.until(lambda c, want=sentinel: c.events()[-1:] == want, timeout=20)
        await client.close()
        assert client.frames[0] == {"type": "hello", "user": user, "mode": "streams",
                                    "last_id": old[-1] if old else FEED_START}, i
        if not exact and "reset" in client.types():
            # Redis 6.2 cannot tell a whole feed from a trimmed one: a reset, not a gap.
            assert_exact(client.events(), sentinel)
        else:
            assert_exact(client.events(), first + sentinel)


async def test_a_client_that_saw_nothing_of_an_empty_feed_gets_all_of_it_on_reconnect(
    gateways: Gateways, redis: Any, keys: Keys
) -> None:
    _, url = gateways.start()
    log = make_log(redis, keys)
    client = await WsClient.open(ws_url(url, "alice"))
    await client.until(lambda c: c.types() == ["hello"])
    start = client.frames[0]["last_id"]
    assert start == FEED_START
    await client.close()
    missed = await publish(log, "alice", 300)  # while it was away, before its first event
    again = await WsClient.open(ws_url(url, "alice", start))
    await again.until(lambda c: "recovered" in c.types() or "reset" in c.types())
    live = await publish(log, "alice", 2, start=300)
    await again.until(lambda c: c.events()[-1:] == live[-1:])
    await again.close()
    if await tells_an_intact_head(redis):
        assert_exact(again.events(), missed + live)
        assert again.frames[301] == {"type": "recovered", "count": 300, "last_id": missed[-1]}
    else:
        assert again.frames[1] == {"type": "reset", "reason": "trimmed", "last_id": missed[-1]}

    # Once the head of the feed is trimmed, the start cannot be replayed: a reset says so.
    trimmed = await publish(log, "bob", 1)
    await redis.xadd(keys.feed("bob"), {"data": b"{}"}, maxlen=1, approximate=False)
    late = await WsClient.open(ws_url(url, "bob", FEED_START))
    await late.until(lambda c: "reset" in c.types())
    await late.close()
    last = (await redis.xrevrange(keys.feed("bob"), count=1))[0][0].decode()
    assert late.frames[1] == {"type": "reset", "reason": "trimmed", "last_id": last}
    assert trimmed[0] != last and late.events() == []


async def test_users_only_receive_their_own_events(gateways: Gateways,
                                                   redis: Any, keys: Keys) -> None:
    _, url = gateways.start()
    log = make_log(redis, keys)
    a = await WsClient.open(ws_url(url, "alice"))
    b = await WsClient.open(ws_url(url, "bob"))
    for c in (a, b):
        await c.until(lambda c: c.types() == ["hello"])
    for_a, for_b = [], []
    for i in range(5):
        for_a += await publish(log, "alice", 3, start=10 * i)
        for_b += await publish(log, "bob", 2, start=10 * i)
    await a.until_events(15)
    await b.until_events(10)
    # A token for bob with alice's last id still only replays bob's stream.
    late = await WsClient.open(ws_url(url, "bob", for_a[0]))
    await late.until(lambda c: "reset" in c.types() or "recovered" in c.types())
    await anyio.sleep(0.5)
    for c in (a, b, late):
        await c.close()
    assert_exact(a.events(), for_a)
    assert_exact(b.events(), for_b)
    assert {f["data"]["user_id"] for f in a.frames if f["type"] == "event"} == {"alice"}
    assert {f["data"]["user_id"] for f in b.frames if f["type"] == "event"} == {"bob"}
    # (feed ids are per stream: bob's may equal alice's, so compare the events themselves)
    assert {f["data"]["user_id"] for f in late.frames if f["type"] == "event"} <= {"bob"}
    assert set(late.events()) <= set(for_b)


@pytest.mark.parametrize("bound", ["queue", "bytes"])
async def test_slow_client_is_closed_4008_and_replays_on_reconnect(
    gateways: Gateways, redis: Any, keys: Keys, bound: str
) -> None:
    """A client that stops reading: its socket buffers fill, then the gateway's queue
    (`queue`), or, with a queue that cannot fill here, the bytes its transport holds
    (`bytes`: LIVEFEED_SEND_BUFFER below one coalesced message of these events, so the
    client resumes on a gateway with the default)."""
    if bound == "queue":
        _, url = gateways.start(send_queue=10)
        resume = url  # a replay is paced by the client: the small queue does not end it
    else:
        _, url = gateways.start(send_queue=100_000, send_buffer=16_384)
        _, resume = gateways.start()
    log = make_log(redis, keys)
    slow = await WsClient.open(ws_url(url, "alice"), max_queue=1, max_size=None)
    await slow.until(lambda c: c.types() == ["hello"])
    ids = await publish(log, "alice", 6000, preview="x" * 2000)
    assert await closed_code(slow, timeout=60) == 4008
    got = [f for f in slow.frames if f["type"] == "event"]
    last = got[-1]["id"] if got else None
    again = await WsClient.open(ws_url(resume, "alice", last or ids[0]), max_size=None)
    await again.until(lambda c: "recovered" in c.types(), timeout=90)
    await again.close()
    expected = ids[ids.index(last) + 1:] if last else ids[1:]
    assert_exact(again.events(), expected)


async def test_sigterm_closes_websockets_with_1012(gateways: Gateways) -> None:
    proc, url = gateways.start()
    client = await WsClient.open(ws_url(url, "alice"))
    await client.until(lambda c: c.types() == ["hello"])
    code = await anyio.to_thread.run_sync(proc.terminate)
    assert code == 0
    assert await closed_code(client) == 1012


async def test_a_burst_of_connections_is_served_not_refused(gateways: Gateways) -> None:
    """Many clients connecting at once (a gateway restart, a deploy): each reads its feed's
    end before the handshake; they wait for a Redis connection, none is answered 500."""
    _, url = gateways.start()
    clients = await anyio_gather([WsClient.open(ws_url(url, f"burst{i}")) for i in range(400)])
    try:
        for client in clients:
            await client.until(lambda c: c.types() == ["hello"])
    finally:
        for client in clients:
            await client.close()


async def anyio_gather(coros: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(coros)

    async def run(i: int, coro: Any) -> None:
        results[i] = await coro

    async with anyio.create_task_group() as tg:
        for i, coro in enumerate(coros):
            tg.start_soon(run, i, coro)
    return results

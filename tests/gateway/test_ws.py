"""`/v1/ws` against real gateway processes with the `websockets` client."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from livefeed.core import auth
from livefeed.core.keys import Keys
from tests.gateway.livehelp import (
    Gateways,
    WsClient,
    assert_exact,
    make_log,
    publish,
    token,
    ws_url,
)
from tests.helpers.frames import closed_code

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


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


async def test_slow_client_is_closed_4008_and_replays_on_reconnect(
    gateways: Gateways, redis: Any, keys: Keys
) -> None:
    _, url = gateways.start(send_queue=10)
    log = make_log(redis, keys)
    # A client that stops reading: its socket buffers fill, then the gateway's queue.
    slow = await WsClient.open(ws_url(url, "alice"), max_queue=1, max_size=None)
    await slow.until(lambda c: c.types() == ["hello"])
    ids = await publish(log, "alice", 6000, preview="x" * 2000)
    assert await closed_code(slow, timeout=60) == 4008
    got = [f for f in slow.frames if f["type"] == "event"]
    last = got[-1]["id"] if got else None
    again = await WsClient.open(ws_url(url, "alice", last or ids[0]))
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

"""Connection limits and presence against real gateway processes: per user over all
gateways, per gateway, per second; refusals are close 4029 (WebSocket) and 429 (SSE), and
`GET /v1/presence` counts a user's connections across gateways."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from livefeed.core import auth
from livefeed.core.keys import Keys
from tests.gateway.livehelp import (
    SECRET,
    Gateways,
    WsClient,
    assert_exact,
    make_log,
    publish,
    token,
    ws_url,
)
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADMIN = {"authorization": f"Bearer {auth.mint(SECRET, 'ops', admin=True)}"}


async def connected(url: str, user: str) -> WsClient:
    client = await WsClient.open(ws_url(url, user))
    await client.until(lambda c: "hello" in c.types())
    return client


async def refusal(url: str, user: str) -> tuple[int | None, str]:
    """Open a WebSocket that the gateway refuses: its close code and reason."""
    client = await WsClient.open(ws_url(url, user))
    with anyio.fail_after(30):
        try:
            while True:
                client.frames.append(await client.recv())
        except ConnectionClosed as exc:
            assert client.frames == [], "a refused connection got frames"
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


@contextlib.asynccontextmanager
async def sse(url: str, user: str) -> AsyncIterator[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=20) as http, \
            http.stream("GET", "/v1/sse",
                        headers={"authorization": f"Bearer {token(user)}"}) as response:
        yield response


async def presence(url: str, user: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        r = await http.get(f"/v1/presence?user={user}", headers=ADMIN)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_the_user_limit_refuses_the_next_connection_and_the_first_keep_working(
        gateways: Gateways, redis: Any, keys: Keys) -> None:
    _, url = gateways.start(max_user_connections=3)
    first = [await connected(url, "alice") for _ in range(3)]
    code, reason = await refusal(url, "alice")
    assert (code, reason) == (4029, "this user holds its limit of 3 connections")
    assert (await presence(url, "alice"))["connections"] == 3  # the refused one holds none
    async with sse(url, "alice") as r:
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert "limit of 3" in (await r.aread()).decode()
    other = await connected(url, "bob")  # per user: bob is not limited by alice
    ids = await publish(make_log(redis, keys), "alice", 3)
    for client in first:
        await client.until_events(3)
        assert_exact(client.events(), ids)
    # One ends: its place is free again.
    await first[0].close()
    await eventually(lambda: _connects(url, "alice"), what="a free place for alice")
    for client in (*first[1:], other):
        await client.close()
    print(f"\nuser limit 3: 4th WebSocket closed {code} ({reason!r}), SSE 429")


async def _connects(url: str, user: str) -> bool:
    client = await WsClient.open(ws_url(url, user))
    try:
        await client.until(lambda c: "hello" in c.types(), timeout=5)
        return True
    except ConnectionClosed:
        return False
    finally:
        await client.close()


async def test_the_gateway_limit_refuses_past_its_connections(gateways: Gateways) -> None:
    _, url = gateways.start(max_connections=3)
    held = [await connected(url, f"user{i}") for i in range(3)]
    assert await refusal(url, "user9") == (4029, "this gateway holds its limit of 3 connections")
    async with sse(url, "user9") as r:
        assert r.status_code == 429
    for client in held:
        await client.close()
    await eventually(lambda: _connects(url, "user9"), what="a free place on the gateway")


async def test_the_connection_rate_refuses_a_burst(gateways: Gateways) -> None:
    # 0.05 a second: a bucket of one token, the next one 20 s later.
    _, url = gateways.start(connect_rate=0.05)
    outcomes: list[int | None] = []
    clients: list[WsClient] = []

    async def attempt(i: int) -> None:
        client = await WsClient.open(ws_url(url, f"burst{i}"))
        try:
            await client.until(lambda c: "hello" in c.types(), timeout=20)
            clients.append(client)
            outcomes.append(None)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.reason.startswith("too many new connections")
            outcomes.append(exc.rcvd.code)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(attempt, i)
    assert sorted(outcomes, key=str) == [4029] * 19 + [None]
    async with sse(url, "burst-sse") as r:
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
    await clients[0].close()
    print(f"\nconnect rate 0.05/s: 20 WebSockets at once, {outcomes.count(4029)} closed 4029, "
          f"{outcomes.count(None)} admitted; SSE 429 Retry-After {r.headers['retry-after']}")


async def test_presence_counts_connections_across_gateways_and_ages_out_a_killed_one(
        gateways: Gateways) -> None:
    _, a = gateways.start(presence_ttl_s=2, max_user_connections=4)
    killed, b = gateways.start(presence_ttl_s=2, max_user_connections=4)
    assert await presence(a, "alice") == {"user": "alice", "connections": 0, "gateways": []}
    on_a = [await connected(a, "alice") for _ in range(2)]
    on_b = [await connected(b, "alice")]
    async with sse(b, "alice") as r:
        assert r.status_code == 200
        seen = await presence(a, "alice")
        assert seen["connections"] == 4 and len(seen["gateways"]) == 2
        # The user limit counts over both gateways: a fifth is refused on either.
        assert (await refusal(a, "alice"))[0] == 4029
    for client in (*on_a, *on_b):
        await client.close()
    await eventually(lambda: _count(a, "alice", 0), what="presence back to 0")

    # A gateway SIGKILLed takes no goodbye: its entries stop counting after the TTL.
    doomed = [await connected(b, "carol") for _ in range(2)]
    assert (await presence(a, "carol"))["connections"] == 2
    killed.kill()
    await eventually(lambda: _count(a, "carol", 0), what="the killed gateway's entries gone")
    del doomed


async def _count(url: str, user: str, n: int) -> bool:
    return bool((await presence(url, user))["connections"] == n)


async def test_presence_is_for_admin_tokens_in_the_header(gateways: Gateways) -> None:
    _, url = gateways.start()
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        assert (await http.get("/v1/presence?user=alice")).status_code == 401
        in_url = await http.get(f"/v1/presence?user=alice&token={ADMIN['authorization'][7:]}")
        assert in_url.status_code == 401 and "Authorization" in in_url.json()["error"]
        user = {"authorization": f"Bearer {token('alice')}"}
        assert (await http.get("/v1/presence?user=alice", headers=user)).status_code == 403
        assert (await http.get("/v1/presence?user=a%20b", headers=ADMIN)).status_code == 400
        assert (await http.get("/v1/presence", headers=ADMIN)).status_code == 400


class SlowPresence:
    """A presence whose join waits for `go`: admits until `limit` joins, then refuses."""

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.joined: list[str] = []
        self.left: list[str] = []

    async def join(self, user: str, limit: int) -> str | None:
        await self.go.wait()
        if len(self.joined) >= limit:
            return None
        self.joined.append(f"m{len(self.joined)}")
        return self.joined[-1]

    async def leave(self, user: str, member: str) -> None:
        self.left.append(member)


@pytest.mark.parametrize("ending", ["admitted", "refused", "gone before admission"])
async def test_a_websocket_takes_its_place_while_its_session_starts(ending: str) -> None:
    from livefeed.gateway.limits import Limited, Limits

    presence = SlowPresence()
    lim = Limits(presence, max_connections=10,  # type: ignore[arg-type]
                 max_user_connections=0 if ending == "refused" else 1, connect_rate=100)
    with anyio.fail_after(10):
        async with lim.connection("alice", "ws") as held:
            # Entered without waiting for the join: the handshake and subscribe go on.
            assert lim.active == 1 and presence.joined == []
            if ending == "gone before admission":
                pass  # the block ends first: the join is cancelled, nothing is held
            elif ending == "refused":
                presence.go.set()
                with pytest.raises(Limited, match="limit of 0"):
                    await held.admitted()
            else:
                presence.go.set()
                await held.admitted()
                assert held.member == "m0"
    assert lim.active == 0
    assert presence.left == (["m0"] if ending == "admitted" else [])
    assert presence.joined == (["m0"] if ending == "admitted" else [])


async def test_sse_takes_its_place_before_its_block() -> None:
    from livefeed.gateway.limits import Limits

    presence = SlowPresence()
    presence.go.set()
    lim = Limits(presence, max_connections=10,  # type: ignore[arg-type]
                 max_user_connections=1, connect_rate=100)
    async with lim.connection("alice", "sse") as held:
        assert held.member == "m0"
    assert presence.left == ["m0"] and lim.active == 0

"""Tokens off the URL: WebSocket auth message and refresh, expiry (4003 / `expired`), SSE
tickets, the server's ping, and a previous secret during rotation. Real gateway processes,
real clients."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import jwt
import pytest
import websockets
from httpx_sse import aconnect_sse

from livefeed.core import auth
from livefeed.core.keys import Keys
from livefeed.schemas.frames import CloseCode
from tests.gateway.livehelp import (
    SECRET,
    Gateways,
    WsClient,
    assert_exact,
    auth_message,
    bearer,
    bearer_for,
    make_log,
    publish,
    token,
    ws_url,
)
from tests.helpers.frames import closed_code

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def raw_close_code(conn: Any, timeout: float = 30) -> int | None:
    with anyio.fail_after(timeout):
        try:
            while True:
                await conn.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def test_first_message_authenticates(gateways: Gateways) -> None:
    _, url = gateways.start(auth_timeout_s=1.0)
    good = await WsClient.open(ws_url(url, "alice"))
    await good.until(lambda c: bool(c.frames))
    assert good.frames[0]["type"] == "hello" and good.frames[0]["user"] == "alice"
    await good.close()

    header = await WsClient.open(ws_url(url, "alice"), header=True)  # no message needed
    await header.until(lambda c: bool(c.frames))
    assert header.frames[0]["type"] == "hello"
    await header.close()

    base = url.replace("http://", "ws://") + "/v1/ws"
    for first in (auth_message("x.y.z"), auth_message(token("a", ttl_s=-5)),
                  json.dumps({"type": "refresh"}), "not json"):
        async with websockets.connect(base) as conn:
            await conn.send(first)
            assert await raw_close_code(conn) == CloseCode.BAD_TOKEN, first
    # Nothing sent within LIVEFEED_AUTH_TIMEOUT: closed, never subscribed.
    async with websockets.connect(base) as conn:
        assert await raw_close_code(conn) == CloseCode.BAD_TOKEN
    # A token in the URL is refused even when good: URLs end up in logs.
    async with websockets.connect(f"{base}?token={token('alice')}") as conn:
        assert await raw_close_code(conn) == CloseCode.BAD_TOKEN


async def test_refresh_of_another_user_or_a_bad_token_closes_4001(gateways: Gateways) -> None:
    _, url = gateways.start()
    for bad in (token("mallory"), "x.y.z"):
        client = await WsClient.open(ws_url(url, "alice"))
        await client.until(lambda c: bool(c.frames))
        await client.conn.send(auth_message(bad, "refresh"))
        assert await closed_code(client) == CloseCode.BAD_TOKEN


async def test_an_expired_token_closes_4003_and_the_client_resumes_exactly(
    gateways: Gateways, redis: Any, keys: Keys
) -> None:
    _, url = gateways.start(token_grace_s=0.5)
    log = make_log(redis, keys)
    short = token("alice", ttl_s=1)
    client = await WsClient.open(ws_url(url, "alice", tok=short))
    await client.until(lambda c: bool(c.frames))
    # A refresh pushes the expiry back: the connection outlives the first token.
    longer = token("alice", ttl_s=4)
    await client.conn.send(auth_message(longer, "refresh"))
    seen = await publish(log, "alice", 3)
    await client.until_events(3)
    assert await closed_code(client) == CloseCode.TOKEN_EXPIRED
    # Not before the refreshed token's exp (without the refresh: the first one's + 0.5 s).
    assert time.time() >= jwt.decode(longer, options={"verify_signature": False})["exp"]
    missed = await publish(log, "alice", 4, start=3)
    again = await WsClient.open(ws_url(url, "alice", client.events()[-1]))
    await again.until(lambda c: "recovered" in c.types())
    live = await publish(log, "alice", 2, start=7)
    await again.until_events(6)
    await again.close()
    assert_exact(client.events(), seen)
    assert_exact(again.events(), missed + live)


async def test_an_idle_websocket_gets_pings(gateways: Gateways) -> None:
    _, url = gateways.start(keepalive_s=0.2)
    client = await WsClient.open(ws_url(url, "alice"))
    await client.until(lambda c: bool(c.frames))
    await client.until_pings(3)
    assert client.types() == ["hello"]
    await client.close()


async def ticket(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> str:
    r = await client.post(f"{url}/v1/tickets", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expires_in"] == 30
    assert isinstance(body["ticket"], str)
    return body["ticket"]


async def test_an_sse_ticket_works_once(gateways: Gateways, redis: Any, keys: Keys) -> None:
    _, url = gateways.start()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
        assert (await client.post(f"{url}/v1/tickets")).status_code == 401
        refused = await client.post(f"{url}/v1/tickets", params={"token": token("alice")})
        assert refused.status_code == 401
        assert (await client.post(f"{url}/v1/tickets",
                                  headers=bearer_for("x.y.z"))).status_code == 401

        once = await ticket(client, url, bearer("alice"))
        async with aconnect_sse(client, "GET", f"{url}/v1/sse",
                                params={"ticket": once}) as source:
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                assert sse.event == "hello" and json.loads(sse.data)["user"] == "alice"
                break
        again = await client.get(f"{url}/v1/sse", params={"ticket": once})
        assert again.status_code == 401
        assert (await client.get(f"{url}/v1/sse", params={"ticket": "nope"})).status_code \
            == 401

        stale = await ticket(client, url, bearer("alice"))
        await redis.pexpire(keys.ticket(stale), 1)  # as if its 30 s had passed
        while await redis.exists(keys.ticket(stale)):
            await anyio.sleep(0.01)
        assert (await client.get(f"{url}/v1/sse", params={"ticket": stale})).status_code \
            == 401


async def test_an_sse_stream_ends_with_expired_when_its_token_expires(
    gateways: Gateways, redis: Any, keys: Keys
) -> None:
    _, url = gateways.start(token_grace_s=0.2)
    log = make_log(redis, keys)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
        t = await ticket(client, url, bearer("alice", ttl_s=1))
        kinds: list[str] = []
        ids: list[str] = []
        async with aconnect_sse(client, "GET", f"{url}/v1/sse",
                                params={"ticket": t}) as source:
            async for sse in source.aiter_sse():
                kinds.append(sse.event)
                if sse.event == "hello":
                    sent = await publish(log, "alice", 2)
                if sse.event == "event":
                    ids.append(sse.id)
        assert kinds[-1] == "expired" and kinds.count("expired") == 1
        assert_exact(ids, sent)


async def test_a_previous_secret_still_verifies_during_rotation(
    gateways: Gateways, tmp_path: Any
) -> None:
    old = "the-old-signing-secret-long-enough-for-hs256"
    path = tmp_path / "previous"
    path.write_text(old + "\n")
    for kind, over in (("env", {"signing_secret_previous": old}),
                       ("file", {"signing_secret_previous_file": str(path)})):
        _, url = gateways.start(**over)
        by_old = auth.mint(old, "alice")
        client = await WsClient.open(ws_url(url, "alice", tok=by_old))
        await client.until(lambda c: bool(c.frames))
        assert client.frames[0]["type"] == "hello", kind
        await client.close()
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.post(f"{url}/v1/tickets",
                                    headers=bearer_for(by_old))).status_code == 200
            assert (await http.post(f"{url}/v1/tickets",
                                    headers=bearer("alice"))).status_code == 200
            other = auth.mint("some-other-secret-long-enough-for-hs256!!", "alice")
            assert (await http.post(f"{url}/v1/tickets",
                                    headers=bearer_for(other))).status_code == 401
    # Without the setting, the old secret's tokens are refused.
    _, url = gateways.start()
    refused = await WsClient.open(ws_url(url, "alice", tok=auth.mint(old, "alice")))
    assert await closed_code(refused) == CloseCode.BAD_TOKEN
    assert SECRET != old


async def test_no_token_or_ticket_reaches_the_gateway_log(gateways: Gateways) -> None:
    """A real gateway process at INFO (uvicorn logs every request line and WebSocket path):
    connected with a ticket, refused with `?token=` on every surface; its log holds
    neither string."""
    proc, url = gateways.start(log_level="INFO")
    tok = token("alice")
    admin = token("ops", admin=True)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client:
        t = await ticket(client, url, bearer_for(tok))
        async with aconnect_sse(client, "GET", f"{url}/v1/sse",
                                params={"ticket": t, "last_id": "0-0"}) as source:
            async for sse in source.aiter_sse():
                assert sse.event == "hello"
                break
        for path in ("/v1/feed", "/v1/sse", "/admin/api/status", "/"):
            r = await client.get(f"{url}{path}", params={"token": admin})
            assert r.status_code in (200, 401), path
        assert (await client.post(f"{url}/v1/events", params={"token": admin},
                                  content=b"[]")).status_code == 401
        assert (await client.get(f"{url}/admin", params={"token": admin})).status_code == 200
    async with websockets.connect(
            url.replace("http://", "ws://") + f"/v1/ws?token={tok}&last_id=0-0") as conn:
        assert await raw_close_code(conn) == CloseCode.BAD_TOKEN
    await WsClient.open(ws_url(url, "alice"), header=True)  # a header on the handshake
    proc.terminate()
    log = proc.log_path.read_text()
    assert "GET /v1/sse?ticket=[redacted]&last_id=0-0" in log  # the lines are there
    assert "/v1/ws?token=[redacted]" in log
    for secret in (tok, admin, t):
        assert secret not in log
    # No part of a JWT either (its header and claims are base64url, not secret, but the
    # signature is what a replay needs).
    for secret in (tok, admin):
        assert secret.split(".")[2] not in log

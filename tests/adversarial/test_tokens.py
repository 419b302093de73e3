"""Hostile tokens on every entrance: WebSocket close 4001, HTTP 401; never a 500."""

from __future__ import annotations

import base64
import json

import anyio
import httpx
import jwt
import pytest
import websockets

from tests.adversarial.conftest import (
    SECRET,
    TALLY,
    Target,
)


def unsigned(payload: dict[str, object]) -> str:
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{head}.{body}."


def signed(payload: dict[str, object]) -> str:
    return jwt.encode(payload, SECRET, algorithm="HS256")


TOKENS: list[tuple[str, str]] = [
    ("garbage", "garbage"),
    ("unicode", "²๙🙂"),
    ("8,000 chars", "a" * 8000),
    ("three dots", "..."),
    ("alg none", unsigned({"sub": "mallory", "exp": 2**40, "adm": True})),
    ("other secret", jwt.encode({"sub": "mallory", "exp": 2**40}, "x" * 40, algorithm="HS256")),
    ("expired", signed({"sub": "mallory", "exp": 1})),
    ("no exp", signed({"sub": "mallory"})),
    ("exp a string", signed({"sub": "mallory", "exp": "never"})),
    ("sub a number", signed({"sub": 5, "exp": 2**40})),
    ("sub with markup", signed({"sub": "[/oops]", "exp": 2**40})),
    ("sub 5,000 chars", signed({"sub": "u" * 5000, "exp": 2**40})),
    ("NUL", "a\x00b"),
]


@pytest.mark.parametrize(("name", "tok"), TOKENS, ids=[t[0] for t in TOKENS])
async def test_hostile_token(target: Target, name: str, tok: str) -> None:
    # Over WebSocket as browsers send it, in the first message (JSON carries any string).
    url = target.base.replace("http://", "ws://") + "/v1/ws"
    conn = await websockets.connect(url, open_timeout=20)
    message = json.dumps({"type": "auth", "token": tok})
    await conn.send(message)
    with anyio.fail_after(30):
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await conn.recv()
    code = closed.value.rcvd.code if closed.value.rcvd else None
    TALLY.record("tokens", f"ws {code}")
    # A message over the inbound bound (LIVEFEED_WS_MAX_MESSAGE, 4 KiB) is refused before
    # it is read: 1009; any other token 4001.
    assert code == (1009 if len(message.encode()) > 4096 else 4001)
    if "\x00" in tok:
        return  # no HTTP client sends a NUL in a header (the raw HTTP table has that case)
    # Non-ASCII: as the UTF-8 bytes a client would put on the wire.
    headers = {"authorization": ("Bearer " + tok).encode()}
    async with httpx.AsyncClient(base_url=target.base, timeout=30) as http:
        feed = await http.get("/v1/feed", headers=headers)
        TALLY.record("tokens", feed.status_code)
        assert feed.status_code == 401
        async with http.stream("GET", "/v1/sse", headers=headers) as r:
            TALLY.record("tokens", r.status_code)
            assert r.status_code == 401
        admin = await http.get("/admin/api/status", headers=headers)
        TALLY.record("tokens", admin.status_code)
        assert admin.status_code == 401
        posted = await http.post("/v1/events", content=b"{}", headers=headers)
        TALLY.record("tokens", posted.status_code)
        assert posted.status_code == 401

"""Oversized and odd headers, raw bytes instead of HTTP, and hostile WebSocket frames.

Raw requests go over a plain socket (an HTTP client would refuse to send them); the answer
is the status line, or `closed` when the server hangs up without one. WebSocket frames
from a client carry nothing today: the gateway reads and ignores them, so after any of
them the connection is still open (a ping is answered) and the client's close is echoed.
"""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
import websockets

from tests.adversarial.conftest import (
    TALLY,
    Target,
    auth_headers,
    sse_connect,
    token,
    ws_connect,
)


def raw_request(target: Target, data: bytes, timeout: float = 20) -> str:
    """Send `data` on a fresh connection; the status line of the answer, or `closed`."""
    parts = urlsplit(target.base)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return "closed"
        chunks = b""
        try:
            while b"\r\n" not in chunks:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks += chunk
        except OSError:
            pass
    line = chunks.split(b"\r\n", 1)[0].decode(errors="replace")
    return line.split(" ", 2)[1] if line.startswith("HTTP/") else "closed"


def req(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


# (name, raw request, status line code or "closed")
RAW: list[tuple[str, bytes, str]] = [
    ("garbage", b"GARBAGE\r\n\r\n", "400"),
    ("binary", bytes(range(256)) * 4, "400"),
    ("empty lines only", b"\r\n\r\n", "closed"),  # may precede a request: no request
    ("no host, HTTP/1.1", req("GET /healthz HTTP/1.1"), "200"),
    ("HTTP/1.0", req("GET /healthz HTTP/1.0"), "200"),
    ("HTTP/9.9", req("GET /healthz HTTP/9.9\nHost: x"), "400"),
    ("header without a colon", req("GET /healthz HTTP/1.1\nHost: x\nnocolon"), "400"),
    ("NUL in a header", req("GET /healthz HTTP/1.1\nHost: x\nX-A: a\x00b"), "400"),
    ("path of 8,000 chars", req("GET /healthz?" + "a" * 8000 + " HTTP/1.1\nHost: x"), "200"),
    ("content-length ²", req("POST /v1/events HTTP/1.1\nHost: x\nContent-Length: ²"), "400"),
    ("content-length negative", req("POST /v1/events HTTP/1.1\nHost: x\nContent-Length: -1"),
     "400"),
    ("content-length 5,000 digits",
     req("POST /v1/events HTTP/1.1\nHost: x\nContent-Length: " + "9" * 5000), "400"),
    ("content-length twice, differing",
     req("POST /v1/events HTTP/1.1\nHost: x\nContent-Length: 1\nContent-Length: 2", b"{}"),
     "400"),
    ("chunked and content-length",
     req("POST /v1/events HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nContent-Length: 3",
         b"0\r\n\r\n"), "400"),
    ("bad chunk size",
     req("POST /v1/events HTTP/1.1\nHost: x\nTransfer-Encoding: chunked", b"zz\r\n{}\r\n"),
     "400"),
    ("declared 2 GiB", req("POST /v1/events HTTP/1.1\nHost: x\nContent-Length: 2147483648"),
     "413"),
    ("websocket upgrade without a key",
     req("GET /v1/ws HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: Upgrade\n"
         "Sec-WebSocket-Version: 13"), "400"),
    ("websocket upgrade, version 99",
     req("GET /v1/ws HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: Upgrade\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 99"), "426"),
]


@pytest.mark.parametrize(("name", "data", "answer"), RAW, ids=[r[0] for r in RAW])
async def test_raw_request(target: Target, name: str, data: bytes, answer: str) -> None:
    got = await anyio.to_thread.run_sync(raw_request, target, data)
    TALLY.record("raw http", got)
    assert got == answer


# (name, headers, status) on GET /v1/feed with a valid token
HEADERS: list[tuple[str, dict[str, bytes], int]] = [
    ("a 60 KB header", {"x-big": b"a" * 60_000}, 200),
    ("a non-ASCII header", {"x-odd": "²๙🙂".encode()}, 200),
    ("latin-1 bytes", {"x-odd": bytes(range(0x80, 0x100))}, 200),
    ("odd content type", {"content-type": b"\xff/\xfe; charset=\xff"}, 200),
    ("odd accept-encoding", {"accept-encoding": b"br;q=NaN, *;q=-1, \xff"}, 200),
    ("a huge cookie", {"cookie": b"a=" + b"b" * 30_000}, 200),
    ("an odd origin", {"origin": b"null"}, 200),
    ("forwarded garbage", {"x-forwarded-for": b"\xff, ::::, 999.1.1.1"}, 200),
]


@pytest.mark.parametrize(("name", "headers", "status"), HEADERS, ids=[h[0] for h in HEADERS])
async def test_odd_headers(target: Target, name: str, headers: dict[str, bytes],
                           status: int) -> None:
    async with httpx.AsyncClient(base_url=target.base, timeout=30) as http:
        r = await http.get("/v1/feed", headers={  # type: ignore[dict-item]
            **auth_headers(token("adv-headers")), **headers})
    TALLY.record("odd headers", r.status_code)
    assert r.status_code == status, r.text[:200]


async def test_many_headers(target: Target) -> None:
    headers = [(f"x-h{i}".encode(), b"v") for i in range(1000)]
    async with httpx.AsyncClient(base_url=target.base, timeout=30) as http:
        r = await http.get("/healthz", headers=headers)
    TALLY.record("odd headers", r.status_code)
    assert r.status_code == 200


async def test_huge_last_event_id_header(target: Target) -> None:
    async with httpx.AsyncClient(timeout=30) as http, sse_connect(
            http, target.base, token("adv-headers"),
            headers={"last-event-id": "9" * 8000}) as r:
        assert r.status_code == 200
        frames = []
        with anyio.fail_after(20):
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    frames.append(json.loads(line[6:]))
                    if len(frames) == 2:
                        break
    TALLY.record("odd headers", f"{frames[1]['type']}:{frames[1].get('reason')}")
    assert [f["type"] for f in frames] == ["hello", "reset"]
    assert frames[1]["reason"] == "unknown_id"


# (name, messages a client sends after its hello, the answer): clients send only small JSON
# (`auth`, `refresh`); anything else is ignored within the inbound bounds (4 KiB a message:
# 1009; 10 messages or 16 KiB a second: 1008, ops/protocols.py).
FRAMES: list[tuple[str, list[str | bytes], str]] = [
    ("text", ["hello"], "open"),
    ("not json", ["{"], "open"),
    ("json of another protocol", ['{"type": "subscribe", "channel": "*"}'], "open"),
    ("binary", [bytes(range(256))], "open"),
    ("5,000 bytes", ["x" * 5000], "closed 1009"),
    ("1 MiB of text", ["x" * (1 << 20)], "closed 1008"),  # the byte rate trips first
    ("1 MiB binary", [b"\x00" * (1 << 20)], "closed 1008"),
    ("500 messages at once", ["m"] * 500, "closed 1008"),
    ("control characters", ["\x1b[31m\x00\u202e"], "open"),
    ("empty", [""], "open"),
]


@pytest.mark.parametrize(("name", "messages", "expected"), FRAMES, ids=[f[0] for f in FRAMES])
async def test_hostile_frames(target: Target, name: str, messages: list[str | bytes],
                              expected: str) -> None:
    conn = await ws_connect(target.base, token("adv-frames"))
    try:
        with anyio.fail_after(30):
            hello = json.loads(await conn.recv())
            assert hello["type"] == "hello"
            for message in messages:
                await conn.send(message)
            pong = await conn.ping()
            await pong
            if expected != "open":  # the close may come after the pong
                await conn.recv()
        answer = "open"
    except websockets.ConnectionClosed as exc:
        answer = f"closed {exc.rcvd.code if exc.rcvd else 'without a close frame'}"
    finally:
        await conn.close()
    TALLY.record("ws frames", answer)
    assert answer == expected
    if expected == "open":
        assert conn.close_code == 1000


async def test_ping_flood(target: Target) -> None:
    """300 pings at once: past the inbound rate (pings count), closed 1008."""
    conn = await ws_connect(target.base, token("adv-frames"))
    answer = "open"
    try:
        with anyio.fail_after(30):
            assert json.loads(await conn.recv())["type"] == "hello"
            pongs = [await conn.ping() for _ in range(300)]
            await asyncio.gather(*pongs)
            await conn.recv()
    except websockets.ConnectionClosed as exc:
        answer = f"closed {exc.rcvd.code if exc.rcvd else 'without a close frame'}"
    finally:
        await conn.close()
    TALLY.record("ws frames", answer)
    assert answer == "closed 1008"


async def test_websocket_with_odd_extensions_and_headers(target: Target) -> None:
    conn = await ws_connect(target.base, token("adv-frames"),
                            additional_headers={"sec-websocket-extensions": "x-bogus; a=\"",
                                                "x-odd": "²".encode()})
    try:
        with anyio.fail_after(30):
            assert json.loads(await conn.recv())["type"] == "hello"
    finally:
        await conn.close()
    TALLY.record("ws frames", "open")


async def test_websocket_with_origin_null_is_refused(target: Target) -> None:
    """Sandboxed and file: pages send `Origin: null`: not an allowed origin (403)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await ws_connect(target.base, token("adv-frames"), origin="null")  # type: ignore[arg-type]
    TALLY.record("ws frames", refused.value.response.status_code)
    assert refused.value.response.status_code == 403

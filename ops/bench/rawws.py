"""Baseline server: the raw floor of a Python fan-out (issue 13).

`python -m livefeed.ops.bench.rawws --port P --redis URL --prefix P`. A bare asyncio
protocol under uvloop: the WebSocket upgrade on /v1/ws is answered by hand (RFC 6455
accept key, no extensions; the user is the `sub` of the `Authorization: Bearer <jwt>`
header, not verified), each connection gets a hello and idles, and every message on a
user's live channel (one pattern subscription) is framed ONCE and handed to each of that
user's sockets with `transport.write`: no ASGI, no per-connection task, no per-send
encoding.
The least any Python server can do per frame; the gateway is compared against it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from typing import Any, cast
from urllib.parse import urlsplit

import jwt

from livefeed.core.keys import Keys
from livefeed.ops.bench.baseline import live_messages, server_args

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16384

sockets: dict[str, set[asyncio.Transport]] = {}


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (server to client)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


HELLO = text_frame(b'{"type":"hello"}')
CLOSE = bytes((0x88, 2)) + (1000).to_bytes(2, "big")


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def bearer(value: bytes) -> str:
    """The token of an `Authorization` header's value ("" unless its scheme is Bearer,
    matched case-insensitively like the gateway does)."""
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Conn(asyncio.Protocol):
    """One TCP connection: HTTP until the upgrade, then an idle WebSocket (client frames
    are only looked at for a close: the bench's clients send no pings)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.user: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.user is not None:
            if data and data[0] & 0x0F == 0x8:  # close: answer it and hang up
                self.transport.write(CLOSE)
                self.transport.close()
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > MAX_HEAD:
                self._reply(b"431 Request Header Fields Too Large")
            return
        self._request(self.head.split(b"\r\n\r\n", 1)[0])

    def _request(self, head: bytes) -> None:
        assert self.transport is not None
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        target = urlsplit(parts[1].decode("latin-1")) if len(parts) == 3 else None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if target is None:
            self._reply(b"400 Bad Request")
        elif target.path == "/healthz":
            self._reply(b"200 OK", b"ok")
        elif target.path != "/v1/ws" or b"sec-websocket-key" not in headers:
            self._reply(b"404 Not Found")
        else:
            try:  # header names were lowered above: they are case-insensitive
                claims = jwt.decode(bearer(headers.get(b"authorization", b"")),
                                    options={"verify_signature": False})
            except jwt.InvalidTokenError:
                self._reply(b"403 Forbidden")
                return
            self.user = str(claims["sub"])
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept_key(headers[b"sec-websocket-key"]) + b"\r\n\r\n" + HELLO)
            sockets.setdefault(self.user, set()).add(self.transport)
        self.head = b""

    def _reply(self, status: bytes, body: bytes = b"") -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.user is not None and self.transport is not None:
            sockets.get(self.user, set()).discard(self.transport)


async def forward(redis_url: str, keys: Keys) -> None:
    async for user, data in live_messages(redis_url, keys):
        frame = text_frame(data)  # encoded once, written to every socket
        for transport in sockets.get(user, ()):
            transport.write(frame)


async def serve(port: int, redis_url: str, prefix: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port, backlog=4096)
    task: Any = asyncio.create_task(forward(redis_url, Keys(prefix)))
    try:
        await server.serve_forever()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main() -> None:
    a = server_args()
    import uvloop

    uvloop.run(serve(a.port, a.redis, a.prefix))


if __name__ == "__main__":
    main()

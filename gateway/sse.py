"""`GET /v1/sse?token=..` (`Last-Event-ID` header or `last_id` query): live delivery as
Server-Sent Events. Each frame is `id:` (feed id, when it has one), `event:` (frame type)
and `data:` (the same JSON as over WebSocket). A bad token is HTTP 401.

uvicorn does not end streaming responses on shutdown: the stream ends itself when the
gateway drains (`state.draining`), and when the client is too slow.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from livefeed.core import auth, metrics
from livefeed.gateway.feature import Feature
from livefeed.gateway.hub import FEATURE as HUB
from livefeed.gateway.live import Out, Session
from livefeed.gateway.sessions import run_with
from livefeed.gateway.state import GatewayState
from livefeed.schemas.frames import FrameType

logger = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
RETRY_MS = 1000
END_TIMEOUT_S = 5.0


def sse_chunk(kind: FrameType, feed_id: str | None, frame: bytes) -> bytes:
    head = b"id: " + feed_id.encode() + b"\n" if feed_id is not None else b""
    return head + b"event: " + kind.encode() + b"\ndata: " + frame + b"\n\n"


class _SseTransport:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = anyio.Lock()
        # Sent with the first frame: a block of its own is an empty event to some clients.
        self._head = f"retry: {RETRY_MS}\n".encode()

    async def write(self, chunk: bytes) -> None:
        async with self._lock:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def send(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None:
        head, self._head = self._head, b""
        await self.write(head + sse_chunk(kind, feed_id, frame))

    async def send_many(self, frames: list[Out]) -> None:
        head, self._head = self._head, b""
        await self.write(head + b"".join(sse_chunk(*out) for out in frames))


class SseStream(Response):
    """The event stream of one session, written straight to the ASGI `send`."""

    def __init__(self, state: GatewayState, user: str, last_id: str | None,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        super().__init__(media_type="text/event-stream",
                         headers={"cache-control": "no-store", "x-accel-buffering": "no"})
        # A stream has no length (Response set one for its empty body).
        self.raw_headers = [h for h in self.raw_headers if h[0] != b"content-length"]
        self.state = state
        self.user = user
        self.last_id = last_id
        self.keepalive_s = keepalive_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        hub, sessions = state.live()
        transport = _SseTransport(send)
        session = Session(
            user=self.user, log=state.log, hub=hub, transport=transport,
            last_id=self.last_id, mode=state.settings.delivery,
            queue_size=state.settings.send_queue, coalesce=state.settings.coalesce,
        )
        # Before the response starts: what is published once the client sees the stream
        # open is delivered to it.
        await session.prepare()
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def until_gone() -> None:
            # Waiting for the client's disconnect, with a comment line whenever it idles
            # that long (proxies close silent streams).
            with contextlib.suppress(OSError):
                while True:
                    with anyio.move_on_after(self.keepalive_s) as idle:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                    if not idle.cancelled_caught:
                        return
                    await transport.write(b": keep-alive\n\n")

        metrics.CLIENTS.labels("sse").inc()
        try:
            with contextlib.suppress(OSError):
                await run_with(session, sessions, until_gone)
        finally:
            metrics.CLIENTS.labels("sse").dec()
        with anyio.move_on_after(END_TIMEOUT_S), contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def live_sse(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    try:
        claims = auth.verify(state.signing_secret, request.query_params.get("token"))
    except auth.InvalidToken:
        return JSONResponse({"error": "bad or expired token"}, status_code=401)
    if state.draining.is_set():
        return JSONResponse({"error": "gateway draining"}, status_code=503)
    last_id = request.headers.get("last-event-id") or request.query_params.get("last_id")
    return SseStream(state, claims.user, last_id)


def routes() -> list[BaseRoute]:
    return [Route("/v1/sse", live_sse)]


FEATURE = Feature("sse", routes, needs=(HUB,))

"""`GET /v1/sse?ticket=..` (`Last-Event-ID` header or `last_id` query): live delivery as
Server-Sent Events. Each frame is `id:` (feed id, when it has one), `event:` (frame type)
and `data:` (the same JSON as over WebSocket).

Authentication: a single-use ticket from `POST /v1/tickets` (EventSource cannot set
headers), or `Authorization: Bearer <token>` from other clients; a bad, used or expired
ticket or token is HTTP 401, and so is a token in the URL. When the token's `exp` is more
than LIVEFEED_TOKEN_GRACE seconds past, the stream ends with an `expired` frame: the client
gets a new ticket and resumes.

uvicorn does not end streaming responses on shutdown: the stream ends itself when the
gateway drains (`state.draining`), and when the client is too slow.
"""

from __future__ import annotations

import contextlib
import logging
import time

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from livefeed.core import auth, metrics
from livefeed.core.errors import REDIS_ERRORS
from livefeed.gateway import limits, tickets
from livefeed.gateway.bearer import bearer_token
from livefeed.gateway.feature import Feature
from livefeed.gateway.hub import FEATURE as HUB
from livefeed.gateway.live import Out, Session
from livefeed.gateway.operation import USER_TOKEN, Answer, Operation, Param
from livefeed.gateway.sessions import run_with
from livefeed.gateway.state import GatewayState
from livefeed.schemas.frames import EXPIRED_FRAME, PING_FRAME, FrameType
from livefeed.schemas.http import ErrorBody

logger = logging.getLogger(__name__)

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

    def send_now(self, frame: bytes) -> bool:
        return False  # every SSE write goes through the ASGI `send`: the session's task

    def send_now_many(self, frames: list[bytes]) -> bool:
        return False


class SseStream(Response):
    """The event stream of one session, written straight to the ASGI `send`."""

    def __init__(self, state: GatewayState, claims: auth.Claims, last_id: str | None) -> None:
        super().__init__(media_type="text/event-stream",
                         headers={"cache-control": "no-store", "x-accel-buffering": "no"})
        # A stream has no length (Response set one for its empty body).
        self.raw_headers = [h for h in self.raw_headers if h[0] != b"content-length"]
        self.state = state
        self.user = claims.user
        self.last_id = last_id
        self.keepalive_s = state.settings.keepalive_s
        self.deadline = claims.exp + state.settings.token_grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with limits.connection(self.state, self.user, "sse"):
                await self._live(receive, send)
        except limits.Limited as refused:
            await JSONResponse({"error": refused.reason}, status_code=429,
                               headers={"retry-after": str(refused.retry_after_s)},
                               )(scope, receive, send)

    async def _live(self, receive: Receive, send: Send) -> None:
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

        expired = False

        async def until_gone() -> None:
            # Waiting for the client's disconnect, with a `ping` every keepalive interval
            # (proxies close silent streams; clients' watchdogs listen), until the token
            # expires.
            nonlocal expired
            with contextlib.suppress(OSError):
                while True:
                    expires_in = self.deadline - time.time()
                    if expires_in <= 0:
                        expired = True
                        return
                    with anyio.move_on_after(min(self.keepalive_s, expires_in)) as idle:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                    if not idle.cancelled_caught:
                        return
                    if self.deadline > time.time():
                        # A `ping` event, not a comment: EventSource shows events to
                        # scripts, so a client's watchdog can see the stream alive.
                        await transport.write(sse_chunk("ping", None, PING_FRAME))

        metrics.CLIENTS.labels("sse").inc()
        try:
            with contextlib.suppress(OSError):
                await run_with(session, sessions, until_gone)
            if expired:
                # After the session ended: nothing follows this frame.
                with anyio.move_on_after(END_TIMEOUT_S), contextlib.suppress(OSError):
                    await transport.send("expired", None, EXPIRED_FRAME)
        finally:
            metrics.CLIENTS.labels("sse").dec()
        with anyio.move_on_after(END_TIMEOUT_S), contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def live_sse(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    try:
        if "token" in request.query_params:
            raise auth.InvalidToken("a token in the URL (?token=) is refused: get a ticket "
                                    "from POST /v1/tickets, or send Authorization: Bearer")
        header = bearer_token(request.headers)
        if header is not None:
            claims = state.verify(header)
        else:
            claims = await tickets.redeem(state, request.query_params.get("ticket"))
    except auth.InvalidToken as exc:
        return JSONResponse({"error": f"bad or expired token or ticket: {exc}"},
                            status_code=401)
    except REDIS_ERRORS:
        return JSONResponse({"error": "Redis unavailable: retry"}, status_code=503,
                            headers={"retry-after": "1"})
    if state.draining.is_set():
        return JSONResponse({"error": "gateway draining"}, status_code=503)
    last_id = request.headers.get("last-event-id") or request.query_params.get("last_id")
    return SseStream(state, claims, last_id)


def routes() -> list[BaseRoute]:
    return [Route("/v1/sse", live_sse)]


OPERATIONS = (
    Operation(
        "GET", "/v1/sse", "getSse", "Live delivery as Server-Sent Events", "live",
        description="The user's feed after `last_id`, then live events, until the client "
        "goes away. Each SSE event has `event:` (the frame type), `data:` (the frame's "
        "JSON, as over WebSocket: a `Frame`) and `id:` (the feed id, for `Last-Event-ID`). "
        "A comment line keeps an idle stream open. The stream ends when the gateway drains "
        "or the client is too slow: reconnect with the last id.",
        params=(
            Param("ticket", "query", "a single-use ticket from `POST /v1/tickets` (for "
                  "EventSource, which cannot set headers); else `Authorization: Bearer`"),
            Param("last_id", "query", "resume after this feed id (absent: from now)"),
            Param("Last-Event-ID", "header", "the same, as EventSource sends it on a "
                  "reconnect; it wins over `last_id`"),
        ),
        security=((USER_TOKEN,), ()),
        responses={
            200: Answer("The event stream", media_type="text/event-stream"),
            401: Answer("A missing, unknown, used or expired ticket, a bad token, or a "
                        "token in the URL", ErrorBody),
            403: Answer("A browser `Origin` not on LIVEFEED_ALLOWED_ORIGINS", ErrorBody),
            429: Answer("A connection limit (per user, per gateway, or the connection rate): "
                        "retry after `Retry-After` seconds", ErrorBody,
                        headers=(Param("Retry-After", "header", "seconds"),)),
            503: Answer("The gateway is draining (connect to another one) or Redis does not "
                        "answer", ErrorBody),
        }),
)

FEATURE = Feature("sse", routes, needs=(HUB, limits.FEATURE), operations=OPERATIONS)

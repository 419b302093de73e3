"""`GET /v1/ws?last_id=..`: live delivery over WebSocket (JSON text frames).

Authentication: the socket is accepted, then the client's first message must be
`{"type": "auth", "token": "<jwt>"}` within LIVEFEED_AUTH_TIMEOUT seconds; non-browser
clients may send `Authorization: Bearer <jwt>` on the handshake instead. A token in the
URL is refused (it would be logged). While connected, `{"type": "refresh", "token": ..}`
(same user) pushes the connection's expiry back: LIVEFEED_TOKEN_GRACE seconds after the
token's `exp` the connection is closed with 4003. An idle socket gets a `ping` frame every
LIVEFEED_KEEPALIVE seconds.

The expiry and the keepalive are deadlines of the one task that reads the client's
messages (there is no timer task per connection).

Frames are written raw when the server offers it (`livefeed.ws.write`, ops/protocols.py,
which `livefeed gateway` runs): each message is WebSocket-encoded here, and a frame that
goes to many connections (every tab of a user gets the same bytes from the hub) is
encoded once and the same bytes written to each socket. Elsewhere (the test client,
another server) frames go through Starlette's `send_text`. Writes wait while the transport
is paused, as uvicorn's own do; a write that leaves more than LIVEFEED_SEND_BUFFER bytes
waiting for the client ends the session with 4008.

Close codes (`schemas.frames.CloseCode`): 4001 bad, missing or late token, 4003 token
expired (get a new one and resume), 4008 client too slow (it reconnects and replays),
1012 gateway draining, 4029 a connection limit (gateway/limits.py); 1009 and 1008 for what
the client sends (ops/protocols.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import anyio
import msgspec
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from livefeed.core import auth, metrics
from livefeed.gateway import limits
from livefeed.gateway.bearer import bearer_token
from livefeed.gateway.feature import Feature
from livefeed.gateway.hub import FEATURE as HUB
from livefeed.gateway.live import ClientTooSlow, Out, Session
from livefeed.gateway.operation import Channel
from livefeed.gateway.sessions import run_with
from livefeed.gateway.state import GatewayState
from livefeed.schemas.frames import (
    PING_FRAME,
    Auth,
    CloseCode,
    Frame,
    FrameType,
    decode_client_message,
    join_frames,
    ws_text_frame,
)

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
_PING_TEXT = PING_FRAME.decode()
_PING_WS = ws_text_frame(PING_FRAME)

# The ASGI scope extension through which the server takes encoded frames.
RAW_WRITE = "livefeed.ws.write"


class RawWriter(Protocol):
    """What the server offers as `scope["extensions"][RAW_WRITE]` (ops.protocols.RawWrite)."""

    def write(self, frame: bytes) -> int | None:
        """Write one whole encoded frame; the bytes waiting in the transport's buffer after
        it, or None (nothing written) when the connection is not open any more."""
        ...

    @property
    def paused(self) -> bool:
        """The transport's buffer is over its high-water mark: `drain` before writing."""
        ...

    async def drain(self) -> None: ...


class _Encoded:
    """The WebSocket frames of the last messages written, by the identity of their bytes:
    the hub hands one bytes object to every session of a user, so the thousand tabs of a
    user cost one encoding. Entries hold their key object, so an id is never reused while
    it is here; the oldest go first."""

    __slots__ = ("_frames", "_size")

    def __init__(self, size: int) -> None:
        self._frames: dict[int, tuple[bytes, bytes]] = {}
        self._size = size

    def __call__(self, frame: bytes) -> bytes:
        frames = self._frames
        hit = frames.get(id(frame))
        if hit is not None and hit[0] is frame:
            return hit[1]
        encoded = ws_text_frame(frame)
        if len(frames) >= self._size:
            del frames[next(iter(frames))]
        frames[id(frame)] = (frame, encoded)
        return encoded


# Frames in flight at once are a few per published event (the fan-out's rounds overlap).
encoded = _Encoded(64)


class WebSocketTransport:
    __slots__ = ("websocket", "last_sent", "raw", "max_buffered", "coalesce")

    def __init__(self, websocket: WebSocket, max_buffered: int = 1 << 20,
                 coalesce: int = 16) -> None:
        self.websocket = websocket
        self.last_sent = time.monotonic()  # the keepalive pings after this much silence
        extensions = websocket.scope.get("extensions") or {}
        self.raw: RawWriter | None = extensions.get(RAW_WRITE)
        # Bytes the transport may hold for the client after a write (LIVEFEED_SEND_BUFFER).
        self.max_buffered = max_buffered
        # Frames per WebSocket message (LIVEFEED_COALESCE).
        self.coalesce = max(1, coalesce)

    async def send(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None:
        self.last_sent = time.monotonic()
        if self.raw is not None:
            await self._write(encoded(frame))
        else:
            # uvicorn's wsproto sends bytes as a binary message: a text frame needs a str.
            await self.websocket.send_text(frame.decode())

    async def send_many(self, frames: list[Out]) -> None:
        """Messages of up to `coalesce` frames each, written to the socket at once."""
        self.last_sent = time.monotonic()
        n = self.coalesce
        messages = [join_frames([frame for _, _, frame in frames[i : i + n]])
                    for i in range(0, len(frames), n)]
        if self.raw is not None:
            # This session's own: encoded once, one write for them all.
            await self._write(b"".join([ws_text_frame(m) for m in messages]))
        else:
            for message in messages:
                await self.websocket.send_text(message.decode())

    def send_now(self, frame: bytes) -> bool:
        """Write a live frame at once when the raw path is offered and the transport is
        not paused; ClientTooSlow past `max_buffered`."""
        raw = self.raw
        if raw is None or raw.paused:
            return False
        buffered = raw.write(encoded(frame))
        if buffered is None:
            return False  # not open: the session's own path sees the same and ends
        self.last_sent = time.monotonic()
        if buffered > self.max_buffered:
            raise ClientTooSlow(f"{buffered} bytes buffered")
        return True

    async def ping(self) -> None:
        # Concurrent with the session's own sends: each message is written whole.
        self.last_sent = time.monotonic()
        if self.raw is not None:
            await self._write(_PING_WS, bounded=False)
        else:
            await self.websocket.send_text(_PING_TEXT)

    async def _write(self, frame: bytes, *, bounded: bool = True) -> None:
        """Write as uvicorn does (after the transport drained below its high-water mark);
        ClientTooSlow when more than `max_buffered` bytes are left waiting."""
        raw = self.raw
        assert raw is not None
        if raw.paused:
            await raw.drain()
        buffered = raw.write(frame)
        if buffered is None:
            raise WebSocketDisconnect(1006)
        if bounded and buffered > self.max_buffered:
            raise ClientTooSlow(f"{buffered} bytes buffered")


async def _refuse(websocket: WebSocket, code: int, reason: str, *, accept: bool = True,
                  ) -> None:
    # Accept first: a close before the handshake reaches the client as HTTP 403, not 4001.
    with anyio.move_on_after(CLOSE_TIMEOUT_S), contextlib.suppress(
        WebSocketDisconnect, OSError, RuntimeError
    ):
        if accept:
            await websocket.accept()
        await websocket.close(code, reason)


def _message_text(message: dict[str, object]) -> str | bytes | None:
    text = message.get("text")
    if isinstance(text, str | bytes):
        return text
    data = message.get("bytes")
    return data if isinstance(data, bytes) else None


async def _first_message(websocket: WebSocket, state: GatewayState) -> auth.Claims | None:
    """The claims of the client's `auth` message; None once the client is gone or was
    closed with 4001."""
    timeout = state.settings.auth_timeout_s
    message: dict[str, object] | None = None
    with anyio.move_on_after(timeout), contextlib.suppress(WebSocketDisconnect, OSError):
        message = dict(await websocket.receive())
    if message is not None and message["type"] == "websocket.disconnect":
        return None
    why = f"no auth message within {timeout:g} s"
    if message is not None:
        try:
            first = decode_client_message(_message_text(message) or b"")
            if not isinstance(first, Auth):
                raise msgspec.ValidationError("not an auth message")
            return state.verify(first.token)
        except msgspec.DecodeError:
            why = 'the first message must be {"type":"auth","token":"<jwt>"}'
        except auth.InvalidToken:
            why = "bad or expired token"
    await _refuse(websocket, CloseCode.BAD_TOKEN, why, accept=False)
    return None


class _Watch:
    """The client side of one connection: reads its messages until it leaves, pings it
    when idle, and ends the session once its token expired (grace included) without a
    refresh. The wait for the next message is bounded by the nearer of the two deadlines
    (a timer handle that cancels this task), so no task or timer runs besides it.
    (Slots rather than a closure: this lives as long as the connection.)"""

    __slots__ = ("websocket", "transport", "session", "state", "user", "deadline", "gone",
                 "_fired")

    def __init__(self, websocket: WebSocket, transport: WebSocketTransport, session: Session,
                 state: GatewayState, claims: auth.Claims) -> None:
        self.websocket = websocket
        self.transport = transport
        self.session = session
        self.state = state
        self.user = claims.user
        self.deadline = claims.exp + state.settings.token_grace_s
        self.gone = False
        self._fired = False

    def _fire(self, task: asyncio.Task[None]) -> None:
        self._fired = True
        task.cancel()

    async def run(self) -> None:
        keepalive = self.state.settings.keepalive_s
        transport = self.transport
        loop = asyncio.get_running_loop()
        task: Any = asyncio.current_task()
        while True:
            expires_in = self.deadline - time.time()
            if expires_in <= 0:
                self.session.stop(CloseCode.TOKEN_EXPIRED)
                return
            idle_left = transport.last_sent + keepalive - time.monotonic()
            if idle_left <= 0:
                try:
                    await transport.ping()
                except (WebSocketDisconnect, OSError, RuntimeError):
                    self.gone = True
                    return
                continue
            self._fired = False
            timer = loop.call_at(loop.time() + min(expires_in, idle_left), self._fire, task)
            try:
                message = await self.websocket.receive()
            except asyncio.CancelledError:
                # Ours: time to ping or to expire (a message that arrived meanwhile stays
                # queued for the next receive). Any other cancellation goes on.
                if not self._fired or task.uncancel() > 0:
                    raise
                continue
            finally:
                timer.cancel()
            if message["type"] == "websocket.disconnect":
                self.gone = True
                return
            if not self._on_message(message):
                return

    def _on_message(self, message: Message) -> bool:
        """False once the session was stopped (a bad refresh)."""
        try:
            received = decode_client_message(_message_text(dict(message)) or b"")
        except msgspec.DecodeError:
            return True  # nothing else is expected of clients: ignored
        try:
            fresh = self.state.verify(received.token)
        except auth.InvalidToken:
            fresh = None
        if fresh is None or fresh.user != self.user:
            self.session.stop(CloseCode.BAD_TOKEN)
            return False
        self.deadline = max(self.deadline, fresh.exp + self.state.settings.token_grace_s)
        return True


async def live_ws(websocket: WebSocket) -> None:
    state: GatewayState = websocket.app.state.lf
    if "token" in websocket.query_params:
        await _refuse(websocket, CloseCode.BAD_TOKEN, "token in the URL refused: send it "
                      "in the first message or an Authorization header")
        return
    claims: auth.Claims | None = None
    header = bearer_token(websocket.headers)
    if header is not None:
        try:
            claims = state.verify(header)
        except auth.InvalidToken:
            await _refuse(websocket, CloseCode.BAD_TOKEN, "bad or expired token")
            return
    if state.draining.is_set():
        await _refuse(websocket, CloseCode.DRAINING, "gateway draining")
        return
    if claims is None:
        await websocket.accept()
        claims = await _first_message(websocket, state)
        if claims is None:
            return
    try:
        async with limits.connection(state, claims.user, "ws"):
            await _live(websocket, state, claims, accepted=header is None)
    except limits.Limited as refused:
        if websocket.client_state == WebSocketState.CONNECTING:
            await websocket.accept()  # so the client sees the close code, not a 403
        await websocket.close(CloseCode.LIMITED, refused.reason)


async def _live(websocket: WebSocket, state: GatewayState, claims: auth.Claims, *,
                accepted: bool) -> None:
    settings = state.settings
    hub, sessions = state.live()
    transport = WebSocketTransport(websocket, settings.send_buffer, settings.coalesce)
    session = Session(user=claims.user, log=state.log, hub=hub, transport=transport,
                      last_id=websocket.query_params.get("last_id"), mode=settings.delivery,
                      queue_size=settings.send_queue, coalesce=settings.coalesce)
    if not accepted:
        # Before the handshake completes: what is published once the client sees itself
        # connected is delivered to it. (After an auth message: once `hello` arrives.)
        await session.prepare()
        await websocket.accept()
    watch = _Watch(websocket, transport, session, state, claims)
    metrics.CLIENTS.labels("ws").inc()
    close_code: int | None = None
    try:
        close_code = await run_with(session, sessions, watch.run)
    except (WebSocketDisconnect, OSError):
        watch.gone = True
    finally:
        metrics.CLIENTS.labels("ws").dec()
    if not watch.gone:
        with anyio.move_on_after(CLOSE_TIMEOUT_S), contextlib.suppress(
            WebSocketDisconnect, OSError, RuntimeError
        ):
            await websocket.close(close_code or 1000, _REASONS.get(close_code or 1000, ""))

_REASONS: dict[int, str] = {CloseCode.TOKEN_EXPIRED: "token expired: get a new one, resume",
                            CloseCode.BAD_TOKEN: "bad token in refresh"}


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/v1/ws", live_ws)]


CHANNELS = (
    Channel(
        "/v1/ws", "live",
        "the same session as `/v1/sse`, one JSON frame per text message, resuming after "
        "the `last_id` query parameter. The token goes as docs/design.md says (HTTP "
        "endpoints, WebSocket). Close codes (`CloseCode` in schemas/frames.py): 4001 bad "
        "or expired token (get a new one), 4003 token expired (get a new one, resume), "
        "4008 too slow (reconnect with the last id), 1012 the gateway drains (reconnect "
        "with backoff), 4029 a connection limit (back off); 1009/1008 what the client sent "
        "is too big or too fast; a browser Origin not allowed is refused with HTTP 403 "
        "before the handshake. docs/design.md lists them all.",
        frames=Frame),
)

FEATURE = Feature("ws", routes, needs=(HUB, limits.FEATURE), channels=CHANNELS)

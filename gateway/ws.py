"""`GET /v1/ws?last_id=..`: live delivery over WebSocket (JSON text frames).

Authentication: the socket is accepted, then the client's first message must be
`{"type": "auth", "token": "<jwt>"}` within LIVEFEED_AUTH_TIMEOUT seconds; non-browser
clients may send `Authorization: Bearer <jwt>` on the handshake instead. A token in the
URL is refused (it would be logged). While connected, `{"type": "refresh", "token": ..}`
(same user) pushes the connection's expiry back: LIVEFEED_TOKEN_GRACE seconds after the
token's `exp` the connection is closed with 4003. An idle socket gets a `ping` frame every
LIVEFEED_KEEPALIVE seconds.

`serve` is the connection's logic over a `LiveSocket`: the gateway's own protocol
(ops/livews.py, which `livefeed gateway` runs for this path; its expiry and keepalive are
entries of the process's one deadline timer, gateway/deadlines.py) or Starlette's
WebSocket (`AsgiSocket`, any ASGI server; the expiry and the keepalive bound the wait of
the one task that reads the client's messages). Neither has a timer task per connection.

Frames are written raw when the protocol offers it (ops/livews.py, or uvicorn's with the
`livefeed.ws.write` extension of ops/protocols.py): each message is WebSocket-encoded
here, and a frame that goes to many connections (every tab of a user gets the same bytes
from the hub) is encoded once and the same bytes written to each socket. Elsewhere (the test client,
another server) frames go through Starlette's `send_text`. Writes wait while the transport
is paused, as uvicorn's own do; a write that leaves more than LIVEFEED_SEND_BUFFER bytes
waiting for the client ends the session with 4008.

Close codes (`schemas.frames.CloseCode`): 4001 bad, missing or late token, 4003 token
expired (get a new one and resume), 4008 client too slow (it reconnects and replays),
1012 gateway draining, 4029 a connection limit (gateway/limits.py); 1009 and 1008 for what
the client sends (ops/livews.py; ops/protocols.py on uvicorn's protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio
import msgspec
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from livefeed.core import auth, metrics
from livefeed.core.settings import Resolved
from livefeed.gateway import limits
from livefeed.gateway.bearer import bearer_token
from livefeed.gateway.feature import Feature
from livefeed.gateway.hub import FEATURE as HUB
from livefeed.gateway.live import ClientTooSlow, Out, Session
from livefeed.gateway.operation import Channel
from livefeed.gateway.sessions import Sessions, run_with
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


def _messages(frames: list[bytes], per_message: int) -> list[bytes]:
    """The payloads of WebSocket messages of up to `per_message` frames each, in order."""
    return [join_frames(frames[i : i + per_message])
            for i in range(0, len(frames), per_message)]


class _Encoded:
    """The WebSocket frames of the last messages written, by the identity of their bytes:
    the hub hands one bytes object to every session of a user, so the thousand tabs of a
    user cost one encoding. Entries hold their key object, so an id is never reused while
    it is here; the oldest go first."""

    __slots__ = ("_frames", "_size", "_last", "_last_many")

    def __init__(self, size: int) -> None:
        self._frames: dict[int, tuple[bytes, bytes]] = {}
        self._size = size
        self._last: tuple[bytes, bytes] = (b"", b"")  # asked for in a row by a user's tabs
        self._last_many: tuple[list[bytes] | None, int, bytes] = (None, 0, b"")

    def __call__(self, frame: bytes) -> bytes:
        last = self._last
        if last[0] is frame:
            return last[1]
        frames = self._frames
        hit = frames.get(id(frame))
        if hit is None or hit[0] is not frame:
            hit = (frame, ws_text_frame(frame))
            if len(frames) >= self._size:
                del frames[next(iter(frames))]
            frames[id(frame)] = hit
        self._last = hit
        return hit[1]

    def many(self, frames: list[bytes], per_message: int) -> bytes:
        """The WebSocket messages of `frames`, `per_message` frames each, encoded once for
        the list a burst's sessions share (the last one asked for)."""
        last = self._last_many
        if last[0] is frames and last[1] == per_message:
            return last[2]
        data = b"".join([ws_text_frame(m) for m in _messages(frames, per_message)])
        self._last_many = (frames, per_message, data)
        return data


# Frames in flight at once are a few per published event (the fan-out's rounds overlap).
encoded = _Encoded(64)


class WebSocketTransport:
    __slots__ = ("websocket", "last_sent", "raw", "max_buffered", "coalesce")

    def __init__(self, websocket: WebSocket | None, max_buffered: int = 1 << 20,
                 coalesce: int = 16, raw: RawWriter | None = None) -> None:
        """`raw`: the writer, when there is no `websocket` (the gateway's own protocol);
        else the websocket's scope extension, if its server offers it."""
        self.websocket = websocket
        self.last_sent = time.monotonic()  # the keepalive pings after this much silence
        if raw is None and websocket is not None:
            raw = (websocket.scope.get("extensions") or {}).get(RAW_WRITE)
        self.raw = raw
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
            await self._websocket().send_text(frame.decode())

    async def send_many(self, frames: list[Out]) -> None:
        """Messages of up to `coalesce` frames each, written to the socket at once."""
        self.last_sent = time.monotonic()
        messages = _messages([frame for _, _, frame in frames], self.coalesce)
        if self.raw is not None:
            # This session's own: encoded once, one write for them all.
            await self._write(b"".join([ws_text_frame(m) for m in messages]))
        else:
            for message in messages:
                await self._websocket().send_text(message.decode())

    def send_now(self, frame: bytes) -> bool:
        """Write a live frame at once when the raw path is offered and the transport is
        not paused; ClientTooSlow past `max_buffered`."""
        raw = self.raw
        if raw is None or raw.paused:
            return False
        return self._wrote_now(raw.write(encoded(frame)))

    def send_now_many(self, frames: list[bytes]) -> bool:
        """`send_now` for a burst: messages of up to `coalesce` frames, one write."""
        raw = self.raw
        if raw is None or raw.paused:
            return False
        return self._wrote_now(raw.write(encoded.many(frames, self.coalesce)))

    def _wrote_now(self, buffered: int | None) -> bool:
        if buffered is None:
            return False  # not open: the session's own path sees the same and ends
        self.last_sent = time.monotonic()
        if buffered > self.max_buffered:
            raise ClientTooSlow(f"{buffered} bytes buffered")
        return True

    def ping_now(self) -> bool:
        """Write the keepalive `ping` at once; False (nothing written) while the transport
        is paused (the client is not reading what it has) or not open."""
        raw = self.raw
        if raw is None or raw.paused or raw.write(_PING_WS) is None:
            return False
        self.last_sent = time.monotonic()
        return True

    async def ping(self) -> None:
        # Concurrent with the session's own sends: each message is written whole.
        self.last_sent = time.monotonic()
        if self.raw is not None:
            await self._write(_PING_WS, bounded=False)
        else:
            await self._websocket().send_text(_PING_TEXT)

    def _websocket(self) -> WebSocket:
        assert self.websocket is not None  # a transport has one or a raw writer
        return self.websocket

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


class LiveSocket(Protocol):
    """One `/v1/ws` connection as `serve` drives it: Starlette's WebSocket (`AsgiSocket`,
    under any ASGI server) or the gateway's own protocol (`ops.livews.LiveWs`)."""

    @property
    def query_params(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def accept(self) -> None:
        """Complete the handshake; WebSocketDisconnect (or OSError) if the client left."""
        ...

    async def receive_first(self, timeout_s: float) -> str | bytes | None:
        """The data of the client's first message; None if none came within `timeout_s`.
        WebSocketDisconnect once the client left."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with `code` (after completing the handshake if it is not, so the client
        sees the code rather than an HTTP 403); bounded, and never raises."""
        ...

    def transport_for(self, settings: Resolved) -> WebSocketTransport: ...

    def run(self, session: Session, sessions: Sessions, watch: Watch,
            ) -> Awaitable[int | None]:
        """Run the session (registered in `sessions`) until it ends, with `watch` told of
        the client's messages and of the keepalive and the token's expiry; what
        `session.run` returns. WebSocketDisconnect (or OSError) once the client is gone."""
        ...

    @property
    def gone(self) -> bool:
        """The client left (or was closed by the protocol): nothing more to close."""
        ...


class Watch:
    """What the client does to its live session once it runs: a `refresh` of the same
    user pushes the token's expiry (`expires`, wall clock, grace included) back; a bad one
    or another user's stops the session with 4001. The socket pings when the client got
    nothing for LIVEFEED_KEEPALIVE seconds and stops the session with 4003 at `expires`.
    (Slots rather than a closure: this lives as long as the connection.)"""

    __slots__ = ("session", "state", "user", "expires")

    def __init__(self, session: Session, state: GatewayState, claims: auth.Claims) -> None:
        self.session = session
        self.state = state
        self.user = claims.user
        self.expires = claims.exp + state.settings.token_grace_s

    def expired(self) -> bool:
        """Past `expires` (then the session was stopped with 4003)."""
        if self.expires - time.time() > 0:
            return False
        self.session.stop(CloseCode.TOKEN_EXPIRED)
        return True

    def on_message(self, data: str | bytes | None) -> bool:
        """False once the session was stopped (a bad refresh)."""
        try:
            received = decode_client_message(data or b"")
        except msgspec.DecodeError:
            return True  # nothing else is expected of clients: ignored
        try:
            fresh = self.state.verify(received.token)
        except auth.InvalidToken:
            fresh = None
        if fresh is None or fresh.user != self.user:
            self.session.stop(CloseCode.BAD_TOKEN)
            return False
        self.expires = max(self.expires, fresh.exp + self.state.settings.token_grace_s)
        return True


def _message_text(message: Message) -> str | bytes | None:
    text = message.get("text")
    if isinstance(text, str | bytes):
        return text
    data = message.get("bytes")
    return data if isinstance(data, bytes) else None


class AsgiSocket:
    """`LiveSocket` over Starlette's WebSocket: the ASGI path (the test client, any server;
    under `livefeed gateway` only when the gateway's own protocol is not in front)."""

    __slots__ = ("websocket", "gone")

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.gone = False

    @property
    def query_params(self) -> Mapping[str, str]:
        return self.websocket.query_params

    @property
    def headers(self) -> Mapping[str, str]:
        return self.websocket.headers

    async def accept(self) -> None:
        await self.websocket.accept()

    async def receive_first(self, timeout_s: float) -> str | bytes | None:
        message: Message | None = None
        with anyio.move_on_after(timeout_s):
            message = await self.websocket.receive()
        if message is None:
            return None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return _message_text(message) or b""

    async def close(self, code: int, reason: str) -> None:
        websocket = self.websocket
        with anyio.move_on_after(CLOSE_TIMEOUT_S), contextlib.suppress(
            WebSocketDisconnect, OSError, RuntimeError
        ):
            if websocket.client_state == WebSocketState.CONNECTING:
                await websocket.accept()
            await websocket.close(code, reason)

    def transport_for(self, settings: Resolved) -> WebSocketTransport:
        return WebSocketTransport(self.websocket, settings.send_buffer, settings.coalesce)

    async def run(self, session: Session, sessions: Sessions, watch: Watch) -> int | None:
        transport = session.transport
        assert isinstance(transport, WebSocketTransport)
        watcher = _AsgiWatch(self, transport, watch)
        try:
            return await run_with(session, sessions, watcher.run)
        except (WebSocketDisconnect, OSError):
            self.gone = True
            raise


class _AsgiWatch:
    """Reads the client's messages until it leaves, pinging it when idle, and ends the
    session once its token expired; the wait for the next message is bounded by the
    nearer of the two deadlines (a timer handle that cancels this task), so no task or
    timer runs besides it."""

    __slots__ = ("socket", "transport", "watch", "_fired")

    def __init__(self, socket: AsgiSocket, transport: WebSocketTransport, watch: Watch) -> None:
        self.socket = socket
        self.transport = transport
        self.watch = watch
        self._fired = False

    def _fire(self, task: asyncio.Task[None]) -> None:
        self._fired = True
        task.cancel()

    async def run(self) -> None:
        watch = self.watch
        keepalive = watch.state.settings.keepalive_s
        transport = self.transport
        websocket = self.socket.websocket
        loop = asyncio.get_running_loop()
        task: Any = asyncio.current_task()
        while True:
            if watch.expired():
                return
            idle_left = transport.last_sent + keepalive - time.monotonic()
            if idle_left <= 0:
                try:
                    await transport.ping()
                except (WebSocketDisconnect, OSError, RuntimeError):
                    self.socket.gone = True
                    return
                continue
            self._fired = False
            wait = min(watch.expires - time.time(), idle_left)
            timer = loop.call_at(loop.time() + wait, self._fire, task)
            try:
                message = await websocket.receive()
            except asyncio.CancelledError:
                # Ours: time to ping or to expire (a message that arrived meanwhile stays
                # queued for the next receive). Any other cancellation goes on.
                if not self._fired or task.uncancel() > 0:
                    raise
                continue
            finally:
                timer.cancel()
            if message["type"] == "websocket.disconnect":
                self.socket.gone = True
                return
            if not watch.on_message(_message_text(message)):
                return


async def _first_message(sock: LiveSocket, state: GatewayState) -> auth.Claims | None:
    """The claims of the client's `auth` message; None once the client is gone or was
    closed with 4001."""
    timeout = state.settings.auth_timeout_s
    try:
        data = await sock.receive_first(timeout)
    except (WebSocketDisconnect, OSError):
        return None
    why = f"no auth message within {timeout:g} s"
    if data is not None:
        try:
            first = decode_client_message(data)
            if not isinstance(first, Auth):
                raise msgspec.ValidationError("not an auth message")
            return state.verify(first.token)
        except msgspec.DecodeError:
            why = 'the first message must be {"type":"auth","token":"<jwt>"}'
        except auth.InvalidToken:
            why = "bad or expired token"
    await sock.close(CloseCode.BAD_TOKEN, why)
    return None


async def live_ws(websocket: WebSocket) -> None:
    await serve(AsgiSocket(websocket), websocket.app.state.lf)


async def serve(sock: LiveSocket, state: GatewayState) -> None:
    """One `/v1/ws` connection, whichever protocol carries it: the token (header or first
    message), the drain, the connection limits, then the live session and its close."""
    if "token" in sock.query_params:
        await sock.close(CloseCode.BAD_TOKEN, "token in the URL refused: send it in the "
                         "first message or an Authorization header")
        return
    claims: auth.Claims | None = None
    header = bearer_token(sock.headers)
    if header is not None:
        try:
            claims = state.verify(header)
        except auth.InvalidToken:
            await sock.close(CloseCode.BAD_TOKEN, "bad or expired token")
            return
    accepted = header is None
    del header  # this frame lives as long as the connection: the token need not
    if state.draining.is_set():
        await sock.close(CloseCode.DRAINING, "gateway draining")
        return
    if claims is None:
        await sock.accept()
        claims = await _first_message(sock, state)
        if claims is None:
            return
    try:
        async with limits.connection(state, claims.user, "ws") as held:
            await _live(sock, state, claims, accepted=accepted, admitted=held.admitted)
    except limits.Limited as refused:
        await sock.close(CloseCode.LIMITED, refused.reason)


async def _live(sock: LiveSocket, state: GatewayState, claims: auth.Claims, *,
                accepted: bool, admitted: Callable[[], Awaitable[None]]) -> None:
    settings = state.settings
    hub, sessions = state.live()
    # The user's connection count is taken while the handshake completes and the session
    # subscribes; the session awaits it before it sends anything (a refusal: 4029).
    session = Session(user=claims.user, log=state.log, hub=hub,
                      transport=sock.transport_for(settings),
                      last_id=sock.query_params.get("last_id"), mode=settings.delivery,
                      queue_size=settings.send_queue, coalesce=settings.coalesce,
                      admitted=admitted)
    if not accepted:
        # Before the handshake completes: what is published once the client sees itself
        # connected is delivered to it. (After an auth message: once `hello` arrives.)
        await session.prepare()
        await sock.accept()
    metrics.CLIENTS.labels("ws").inc()
    close_code: int | None = None
    try:
        close_code = await sock.run(session, sessions, Watch(session, state, claims))
    except (WebSocketDisconnect, OSError):
        pass  # gone
    finally:
        metrics.CLIENTS.labels("ws").dec()
    if not sock.gone:
        code = close_code or 1000
        await sock.close(code, _REASONS.get(code, ""))

_REASONS: dict[int, str] = {CloseCode.TOKEN_EXPIRED: "token expired: get a new one, resume",
                            CloseCode.BAD_TOKEN: "bad token in refresh"}


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/v1/ws", live_ws)]


CHANNELS = (
    Channel(
        "/v1/ws", "live",
        "the same session as `/v1/sse`, JSON frames in text messages (one per line, up to "
        "LIVEFEED_COALESCE in a message when several are ready at once), resuming after "
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

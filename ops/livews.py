"""`/v1/ws` served by the gateway's own asyncio protocol instead of uvicorn's WSProtocol.

Memory: an idle connection under uvicorn's WSProtocol keeps an `asyncio.Queue`, Events,
wsproto's h11 handshake state, the ASGI scope and a chain of ~21 suspended coroutines
(uvicorn's task, Starlette's middleware and router, the endpoint and its watcher) for its
whole life (BENCHMARKS.md, "What one idle connection is made of"). `LiveWs` keeps the
session and a few slots: one task (the session's), no queue, no ASGI scope, wsproto's
handshake object only until the handshake is done and its frame parser only while a frame
is partly received, and its deadlines on the process's one timer (gateway/deadlines.py).

`BoundedHttp` (ops/protocols.py) hands a WebSocket upgrade request for `/v1/ws` to
`LiveUpgrade.take` (when the app serves that route); every other upgrade goes to uvicorn's
protocol as before. The connection logic is gateway/ws.py's `serve`, the same as on the
ASGI path; what uvicorn and the middleware did for `/v1/ws` is done here:

- the handshake is wsproto's (`H11Handshake`: a bad one is answered 400/426 as uvicorn
  does), a browser `Origin` that is not allowed is answered 403 before it
  (gateway/headers.py's policy, counted as `origin` refusals), and uvicorn's access log
  lines (`"WebSocket /v1/ws?.." [accepted]`, `403`; ops/logredact.py redacts them), with
  the client a trusted proxy names in `X-Forwarded-For` (ProxyHeadersMiddleware's rule);
- messages after the auth message and before the session started are kept (up to
  EARLY_MESSAGES) and handed to it, as uvicorn's queue would;
- frames are parsed by wsproto's `FrameProtocol` (a malformed one closes with its code);
  a ping is answered with a pong; an inbound message over `ws_max_message` (whole or in
  fragments) closes with 1009, more frames or bytes per second than the bounds allow with
  1008 (`livefeed_ws_inbound_closes`);
- a close the client starts is answered; one the server starts waits for the client's
  answer, at most CLOSE_TIMEOUT_S, before the socket closes;
- uvicorn's keepalive: a ping every `ws_ping_interval`, close 1011 without a pong within
  `ws_ping_timeout`;
- uvicorn's graceful shutdown counts these connections (`server_state.connections`) and
  calls `shutdown`: close 1012, as uvicorn closes its WebSockets;
- the raw writer of gateway/ws.py's transport (`write`, `paused`, `drain`).

Deadlines (the auth message's, the keepalive, the token's expiry, the close handshake's,
uvicorn's pong timeout) may fire up to one tick (50 ms) late.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

from starlette.datastructures import Headers, QueryParams
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocketDisconnect
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from livefeed.core import metrics
from livefeed.core.settings import Resolved
from livefeed.gateway.deadlines import Deadlines
from livefeed.gateway.headers import OriginPolicy
from livefeed.gateway.live import Session
from livefeed.gateway.sessions import Sessions
from livefeed.gateway.state import GatewayState
from livefeed.gateway.ws import Watch, WebSocketTransport, serve
from livefeed.ops.protocols import MESSAGE_TOO_BIG, POLICY_VIOLATION, Bounds, _Bucket

if TYPE_CHECKING:
    from uvicorn.server import ServerState

    from livefeed.ops.protocols import BoundedHttp

logger = logging.getLogger(__name__)
access = logging.getLogger("uvicorn.error")  # where uvicorn logs its WebSocket lines

PATH = "/v1/ws"
CLOSE_TIMEOUT_S = 10.0  # uvicorn's close_timeout
KEEPALIVE_TIMEOUT = 1011
EARLY_MESSAGES = 8  # kept between the auth message and the session's start

# Control frames a server sends are unmasked and keep no state: one encoder for all.
_FRAMES = FrameProtocol(client=False, extensions=[])
_DATA = (Opcode.TEXT, Opcode.BINARY)

# Connection states.
_CONNECTING, _OPEN, _CLOSING, _CLOSED = range(4)


def serves(app: Any, path: str = PATH) -> bool:
    """`app` has the WebSocket route the gateway's protocol takes over."""
    return any(isinstance(route, WebSocketRoute) and route.path == path
               for route in getattr(app, "routes", ()))


class LiveUpgrade:
    """BoundedHttp's upgrade hook (one per server process): WebSocket upgrades of `path`
    go to `LiveWs`, with `app`'s gateway state."""

    def __init__(self, app: Any, bounds: Bounds, path: str = PATH) -> None:
        self.app = app
        self.bounds = bounds
        self.path = path
        self.deadlines = Deadlines()
        self.server_state: ServerState | None = None
        self.origins: OriginPolicy | None = None
        self.ping_interval: float | None = None
        self.ping_timeout: float | None = None
        self.trusted: Any = None  # uvicorn's trusted proxies (`--forwarded-allow-ips`)

    def take(self, http: BoundedHttp) -> bool:
        """Take over `http`'s connection if its upgrade request is for `path`."""
        target: bytes = http.url
        if unquote(target.partition(b"?")[0].decode("latin-1")) != self.path:
            return False
        state: GatewayState | None = getattr(self.app.state, "lf", None)
        if state is None:  # no lifespan (yet): the ASGI path answers
            return False
        if self.origins is None:
            self.origins = OriginPolicy(state.settings.allowed_origins)
            self.server_state = http.server_state
            self.ping_interval = http.config.ws_ping_interval
            self.ping_timeout = http.config.ws_ping_timeout
            if http.config.proxy_headers:  # whose X-Forwarded-For the access log believes
                self.trusted = ProxyHeadersMiddleware(
                    self.app, http.config.forwarded_allow_ips).trusted_hosts
        request = [http.scope["method"].encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in http.scope["headers"]:
            request += [name, b": ", value, b"\r\n"]
        request.append(b"\r\n")
        http.connections.discard(http)
        ws = LiveWs(self, state)
        transport = http.transport
        ws.connection_made(transport)
        transport.set_protocol(ws)
        # The HTTP protocol and its parser refer to each other: without this it would
        # wait for a full collection (rare after gc.freeze) rather than go now.
        http.parser = None  # type: ignore[assignment]
        ws.handshake(b"".join(request))
        return True


class LiveWs(asyncio.Protocol):
    """One `/v1/ws` connection: the `LiveSocket` of gateway/ws.py's `serve`, and the raw
    writer of its transport."""

    __slots__ = ("upgrade", "state", "transport", "gone", "session", "watch", "_out", "_sessions",
                 "_stage", "_handshake", "_request", "_params", "_proto", "_parts", "_size",
                 "_frames", "_bytes", "_first", "_early", "_waiter", "_paused", "_until", "_due",
                 "_ping_at", "_pong_due")

    def __init__(self, upgrade: LiveUpgrade, state: GatewayState) -> None:
        self.upgrade = upgrade
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.gone = False  # the client left or the protocol closed it: serve closes nothing
        self.session: Session | None = None
        self.watch: Watch | None = None
        self._out: WebSocketTransport | None = None
        self._sessions: Sessions | None = None
        self._stage = _CONNECTING
        self._handshake: H11Handshake | None = None
        self._request: Request | None = None
        self._params: QueryParams | None = None
        self._proto: FrameProtocol | None = None  # while a frame is partly received
        self._parts: list[Any] | None = None  # of a message received in fragments
        self._size = 0
        self._frames: _Bucket | None = None
        self._bytes: _Bucket | None = None
        self._first: asyncio.Future[str | bytes | None] | None = None
        # Messages after the auth message, before the session started (the limits and
        # presence check): handed to the watch when it starts, as uvicorn's queue would.
        self._early: list[str | bytes] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._until = math.inf  # the auth message's or the close handshake's deadline
        self._due = math.inf  # the earliest time this is in the deadlines' heap for
        self._ping_at = math.inf  # uvicorn's keepalive ping
        self._pong_due = math.inf

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses)
        self.transport = cast(asyncio.Transport, transport)
        server_state = self.upgrade.server_state
        assert server_state is not None
        server_state.connections.add(self)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stage = _CLOSED
        self._proto = self._parts = None
        self._end(1006)
        server_state = self.upgrade.server_state
        assert server_state is not None
        server_state.connections.discard(self)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self._stage in (_CONNECTING, _CLOSED):
            return  # before the 101 a client sends nothing (uvicorn buffers it in h11)
        now = time.monotonic()
        if self._stage == _OPEN:
            assert self._bytes is not None
            if not self._bytes.take(len(data), now):
                self._too_much(POLICY_VIOLATION, "inbound bytes per second exceeded")
        # Parsed even then (frames must stay aligned): after our close, only the client's
        # close frame is acted on.
        proto = self._proto or FrameProtocol(client=False, extensions=[])
        proto.receive_bytes(data)
        try:
            for frame in proto.received_frames():
                self._on_frame(frame.opcode, frame.payload, frame.message_finished, now)
                if self._stage == _CLOSED:
                    return
        except ParseFailed as failed:
            self._fail(failed.code, str(failed))
            return
        # wsproto's parser holds no state between frames: it goes, and comes back with the
        # next bytes (an idle connection keeps none).
        decoder = proto._frame_decoder
        idle = decoder.header is None and not decoder.buffer.buffer \
            and proto._message_decoder.opcode is None
        self._proto = None if idle else proto

    # -- frames ---------------------------------------------------------------------------

    def _on_frame(self, opcode: Opcode, payload: Any, finished: bool, now: float) -> None:
        if self._stage == _CLOSING:
            if opcode is Opcode.CLOSE:  # the client answered our close
                self._stage = _CLOSED
                self._close_transport()
            return
        if opcode is Opcode.CLOSE:
            code, reason = payload
            self._write(_FRAMES.close(code, reason))
            self._stage = _CLOSED
            self._end(code)
            self._close_transport()
            return
        assert self._frames is not None
        if not self._frames.take(1, now):
            self._too_much(POLICY_VIOLATION, "inbound messages per second exceeded")
            return
        if opcode is Opcode.PING:
            self._write(_FRAMES.pong(payload))
            return
        if opcode is Opcode.PONG:
            self._pong_due = math.inf
            return
        if opcode not in _DATA:
            return
        size = self._size + (len(payload) if isinstance(payload, bytes) or payload.isascii()
                             else len(payload.encode()))
        limit = self.upgrade.bounds.ws_max_message
        if size > limit:
            self._too_much(MESSAGE_TOO_BIG, f"Message exceeds the maximum size ({limit} bytes)")
            return
        if not finished:
            self._parts = [*(self._parts or ()), payload]
            self._size = size
            return
        if self._parts:
            payload = payload[:0].join([*self._parts, payload])
        self._parts, self._size = None, 0
        self._on_message(payload)

    def _on_message(self, data: str | bytes) -> None:
        first = self._first
        if first is not None and not first.done():
            first.set_result(data)
            return
        if self.watch is not None:
            self.watch.on_message(data)
        elif self._early is None:
            self._early = [data]
        elif len(self._early) < EARLY_MESSAGES:
            self._early.append(data)
        # (More than that within the few milliseconds before the start: dropped. The
        # inbound rate bound allows 10 a second.)

    def _too_much(self, code: int, reason: str) -> None:
        """Close with 1008/1009 as uvicorn closes for the app (the session sees a client
        gone); what the client sends meanwhile is read and dropped."""
        metrics.WS_INBOUND_CLOSES.labels(str(code)).inc()
        self._send_close(code, reason)
        self._end(code)

    def _fail(self, code: int, reason: str) -> None:
        """A frame wsproto cannot parse: its close code, and the socket goes (as uvicorn)."""
        if self._stage == _OPEN:
            self._write(_FRAMES.close(code, reason))
        self._stage = _CLOSED
        self._end(code)
        self._close_transport()

    def _send_close(self, code: int, reason: str) -> None:
        if self._stage != _OPEN:
            return
        self._write(_FRAMES.close(code, reason))
        self._stage = _CLOSING
        self._until = time.monotonic() + CLOSE_TIMEOUT_S
        self._schedule(self._until)

    def _end(self, code: int) -> None:
        """The client is gone for the session (or about to be): wake whatever waits."""
        self.gone = True
        first = self._first
        if first is not None and not first.done():
            first.set_exception(WebSocketDisconnect(code))
        if self.session is not None:
            self.session.stop()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _write(self, data: bytes | bytearray) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- the handshake --------------------------------------------------------------------

    def handshake(self, request: bytes) -> None:
        """Validate the upgrade request (wsproto), check its Origin, start `serve`."""
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.receive_data(request)
            event = next(handshake.events(), None)
        except RemoteProtocolError as bad:
            self._write(handshake.send(bad.event_hint or RejectConnection(status_code=400)))
            self._close_transport()
            return
        if not isinstance(event, Request):
            self._close_transport()
            return
        origins = self.upgrade.origins
        assert origins is not None
        origin = Headers(raw=event.extra_headers).get("origin")
        if not origins.allows(origin, event.host):
            metrics.CONNECTIONS_REFUSED.labels("origin").inc()
            access.info('%s - "WebSocket %s" 403', self._client(event), event.target)
            self._write(handshake.send(RejectConnection(status_code=403)))
            self._close_transport()
            return
        self._handshake, self._request = handshake, event
        self._params = QueryParams(event.target.partition("?")[2])
        server_state = self.upgrade.server_state
        assert server_state is not None
        # `serve` itself is the task's coroutine, and `_served` its epilogue: a coroutine
        # around it would stay suspended as long as the connection.
        task = asyncio.get_running_loop().create_task(serve(self, self.state))
        server_state.tasks.add(task)
        task.add_done_callback(self._served)

    def _client(self, request: Request) -> str:
        """The client's address as uvicorn's access log shows it: the peer's, or from a
        trusted proxy, the client its `X-Forwarded-For` names (ProxyHeadersMiddleware)."""
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if not isinstance(peer, tuple):
            return ""
        host, port = peer[0], peer[1]
        trusted = self.upgrade.trusted
        if trusted is not None and host in trusted:
            forwarded = [value for name, value in request.extra_headers
                         if name.lower() == b"x-forwarded-for"]
            if forwarded:
                named, named_port = trusted.get_trusted_client_address(
                    b", ".join(forwarded).decode("latin-1"))
                if named:  # (an empty header names no one)
                    host, port = named, named_port
        return f"{host}:{port}"

    def _served(self, task: asyncio.Task[None]) -> None:
        server_state = self.upgrade.server_state
        assert server_state is not None
        server_state.tasks.discard(task)
        if self._sessions is not None and self.session is not None:
            self._sessions.discard(self.session)
        self.session = self.watch = self._out = self._sessions = None
        failed = None if task.cancelled() else task.exception()
        if failed is not None and not isinstance(failed, WebSocketDisconnect | OSError):
            logger.error("the /v1/ws connection failed", exc_info=failed)
            if self._stage == _CONNECTING and self._handshake is not None:
                self._reject(500, b"Internal Server Error")
        if self._stage in (_CONNECTING, _OPEN):  # ended without a close: the socket goes
            self._close_transport()

    def _reject(self, status: int, body: bytes) -> None:
        handshake = self._handshake
        assert handshake is not None
        self._handshake = None
        self._stage = _CLOSED
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        self._write(handshake.send(RejectConnection(status_code=status, headers=headers,
                                                    has_body=True))
                    + handshake.send(RejectData(data=body)))
        self._close_transport()

    # -- uvicorn's graceful shutdown ------------------------------------------------------

    def shutdown(self) -> None:
        """As uvicorn's own: an open WebSocket is closed with 1012 and its socket goes; one
        closing loses its socket; a handshake under way is answered 500."""
        if self._stage == _OPEN:
            self._write(_FRAMES.close(1012))
            self._stage = _CLOSED
            self._end(1012)
        elif self._stage == _CONNECTING and self._handshake is not None:
            self._reject(500, b"Internal Server Error")
        self._close_transport()

    # -- LiveSocket (gateway/ws.py) -------------------------------------------------------

    @property
    def query_params(self) -> QueryParams:
        return self._params if self._params is not None else QueryParams()

    @property
    def headers(self) -> Headers:
        return Headers(raw=self._request.extra_headers if self._request else [])

    async def accept(self) -> None:
        handshake, transport = self._handshake, self.transport
        if self._stage != _CONNECTING or handshake is None or transport is None or \
                transport.is_closing():
            raise WebSocketDisconnect(1006)
        server_state = self.upgrade.server_state
        assert server_state is not None and self._request is not None
        access.info('%s - "WebSocket %s" [accepted]', self._client(self._request),
                    self._request.target)
        transport.write(handshake.send(AcceptConnection(
            extra_headers=list(server_state.default_headers))))
        self._handshake = self._request = None  # h11's state is not needed any more
        self._stage = _OPEN
        bounds = self.upgrade.bounds
        self._frames = _Bucket(bounds.ws_inbound_messages)
        self._bytes = _Bucket(bounds.ws_inbound_bytes)
        interval = self.upgrade.ping_interval
        if interval:
            self._ping_at = time.monotonic() + interval
            self._schedule(self._ping_at)

    async def receive_first(self, timeout_s: float) -> str | bytes | None:
        if self.gone:
            raise WebSocketDisconnect(1006)
        if self._early:  # it came before this was asked for
            data = self._early.pop(0)
            self._early = self._early or None
            return data
        first: asyncio.Future[str | bytes | None] = asyncio.get_running_loop().create_future()
        self._first = first
        self._until = time.monotonic() + timeout_s
        self._schedule(self._until)
        try:
            return await first
        finally:
            self._first = None
            if self._stage == _OPEN:  # (closing: the close handshake's deadline)
                self._until = math.inf

    async def close(self, code: int, reason: str) -> None:
        if self._stage == _CONNECTING:
            try:
                await self.accept()
            except WebSocketDisconnect:
                return
        self._send_close(code, reason)

    def transport_for(self, settings: Resolved) -> WebSocketTransport:
        self._out = WebSocketTransport(None, settings.send_buffer, settings.coalesce, raw=self)
        return self._out

    def run(self, session: Session, sessions: Sessions, watch: Watch,
            ) -> Awaitable[int | None]:
        # Not a coroutine around `session.run` (it would stay suspended as long as the
        # connection): the session leaves `sessions` when the task ends (`_served`).
        self.session, self.watch, self._params = session, watch, None
        self._sessions = sessions
        if self.gone:
            session.stop()
        early, self._early = self._early, None
        for data in early or ():
            if not watch.on_message(data):
                break
        self._schedule(self._next(time.monotonic()))
        sessions.add(session)
        return session.run()

    # -- the raw writer (gateway/ws.py's RawWriter) ---------------------------------------

    def write(self, frame: bytes) -> int | None:
        transport = self.transport
        if self._stage != _OPEN or transport is None or transport.is_closing():
            return None
        transport.write(frame)
        return transport.get_write_buffer_size()

    @property
    def paused(self) -> bool:
        return self._paused

    async def drain(self) -> None:
        if not self._paused or self._stage == _CLOSED:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter and waiter.done():
                self._waiter = None

    # -- deadlines ------------------------------------------------------------------------

    def _schedule(self, when: float) -> None:
        if when < self._due:
            self._due = when
            self.upgrade.deadlines.at(when, self)

    def _next(self, now: float) -> float:
        """The nearest of this connection's deadlines (monotonic)."""
        when = min(self._until, self._ping_at, self._pong_due)
        watch, out = self.watch, self._out
        if watch is not None and out is not None and self._stage == _OPEN:
            keepalive = out.last_sent + self.state.settings.keepalive_s
            when = min(when, keepalive, now + watch.expires - time.time())
        return when

    def due(self, now: float) -> None:
        if now < self._due:
            # An entry superseded by an earlier one, which came already and scheduled
            # what is next: acting again would keep a second entry for good.
            return
        self._due = math.inf
        stage = self._stage
        if stage == _CLOSED:
            return
        if stage == _CLOSING:
            if now >= self._until:  # the client did not answer our close
                self._stage = _CLOSED
                self._close_transport()
            else:
                self._schedule(self._until)
            return
        first = self._first
        if first is not None and now >= self._until:
            self._until = math.inf
            if not first.done():
                first.set_result(None)  # no auth message in time
        if stage == _OPEN:
            self._keepalive(now)
            if self._stage != _OPEN:
                return
            watch, out = self.watch, self._out
            if watch is not None and out is not None and self.session is not None:
                if watch.expired():
                    return  # the session ends and `serve` closes with 4003
                if now >= out.last_sent + self.state.settings.keepalive_s and \
                        not out.ping_now():
                    out.last_sent = now  # paused: the client has frames to read
        self._schedule(self._next(now))

    def _keepalive(self, now: float) -> None:
        """uvicorn's: a ping every `ws_ping_interval`, 1011 without a pong in time."""
        if now >= self._pong_due:
            self._pong_due = math.inf
            reason = "keepalive ping timeout"
            self._write(_FRAMES.close(KEEPALIVE_TIMEOUT, reason))
            self._stage = _CLOSED
            self._end(KEEPALIVE_TIMEOUT)
            self._close_transport()
            return
        interval, timeout = self.upgrade.ping_interval, self.upgrade.ping_timeout
        if interval and now >= self._ping_at:
            self._write(_FRAMES.ping(b""))
            self._ping_at = now + interval
            if timeout is not None and self._pong_due == math.inf:
                self._pong_due = now + timeout

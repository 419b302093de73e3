"""uvicorn's HTTP and WebSocket protocols with the bounds a public gateway needs.

- **Header and body deadlines** (slow-loris): uvicorn bounds only the idle time between
  requests (keep-alive). A request's headers must be complete within
  `LIVEFEED_HEADER_TIMEOUT` seconds of the connection opening (or of the previous response
  ending), and its body within `LIVEFEED_BODY_TIMEOUT` seconds of its headers; otherwise
  the connection is closed (the app, if it was reading the body, sees a disconnect).
- **Inbound WebSocket size**: uvicorn's `ws_max_size` (`LIVEFEED_WS_MAX_MESSAGE`): a
  longer message, whole or in fragments, closes with 1009 before more is buffered.
- **Inbound WebSocket rate**: frames (pings and fragments included) and bytes per second
  from the client, each a token bucket holding one second's worth
  (`LIVEFEED_WS_INBOUND_MESSAGES`, `LIVEFEED_WS_INBOUND_BYTES`); past either, close 1008.
  Clients send only small `auth`/`refresh` messages, so this costs them nothing, and a
  client that pings without reading cannot pile up pongs in the gateway faster than that.
- **Raw writes** (outbound): the scope extension `livefeed.ws.write` (`RawWrite`) lets the
  app write a WebSocket frame it encoded itself (once, for every connection that gets it)
  straight to the socket, instead of a Starlette -> uvicorn -> wsproto encoding per
  connection.
- **Upgrade hook**: `BoundedHttp` offers a WebSocket upgrade request to its `upgrade_hook`
  first; `livefeed gateway` sets it to the gateway's own `/v1/ws` protocol
  (ops/livews.py, which applies the bounds above itself). Other upgrades get `BoundedWs`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar, Protocol

import wsproto
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto import events
from wsproto.connection import ConnectionState

from livefeed.core import metrics
from livefeed.core.settings import Settings
from livefeed.gateway.ws import RAW_WRITE

POLICY_VIOLATION = 1008  # inbound rate exceeded
MESSAGE_TOO_BIG = 1009  # uvicorn's own close for a message over ws_max_size


class Bounds:
    """The protocol bounds of one server (from the settings)."""

    def __init__(self, settings: Settings) -> None:
        self.header_timeout_s = settings.header_timeout_s
        self.body_timeout_s = settings.body_timeout_s
        self.ws_max_message = settings.ws_max_message
        self.ws_inbound_messages = settings.ws_inbound_messages
        self.ws_inbound_bytes = settings.ws_inbound_bytes

    def config(self, upgrade: UpgradeHook | None = None) -> dict[str, Any]:
        """uvicorn.Config arguments: the protocol classes and the WebSocket size bound;
        `upgrade`: the hook that may take WebSocket upgrades over (ops/livews.py)."""
        bounds = self

        class Http(BoundedHttp):
            header_timeout_s = bounds.header_timeout_s
            body_timeout_s = bounds.body_timeout_s
            upgrade_hook = upgrade

        class Ws(BoundedWs):
            messages_per_s = bounds.ws_inbound_messages
            bytes_per_s = bounds.ws_inbound_bytes

        return {"http": Http, "ws": Ws, "ws_max_size": self.ws_max_message}


class UpgradeHook(Protocol):
    def take(self, http: BoundedHttp) -> bool:
        """Take `http`'s connection over for its WebSocket upgrade request (which it has
        whole); False: uvicorn's WebSocket protocol gets it."""
        ...


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on headers and one on the body, and
    an upgrade hook (the gateway's own protocol for `/v1/ws`, ops/livews.py)."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    upgrade_hook: ClassVar[UpgradeHook | None] = None

    _deadline: asyncio.TimerHandle | None = None
    _phase = "headers"
    _seen: object = None  # the request cycle the deadline was set for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers are due within the bound, unless a pipelined one
        # already came whole (it is in `cycle`, started by the call above).
        if not self.transport.is_closing() and (self.cycle is None
                                                or self.cycle.response_complete):
            self._seen = self.cycle
            self._arm("headers", self.header_timeout_s)

    def handle_websocket_upgrade(self) -> None:
        hook = self.upgrade_hook
        if hook is None or not hook.take(self):
            super().handle_websocket_upgrade()

    def _follow(self) -> None:
        """After data arrived: move on from the header deadline to the body's, or none."""
        if self._deadline is None:
            return
        if self.transport.get_protocol() is not self:  # upgraded to WebSocket
            self._disarm()
            return
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen:  # a request's headers are in
            self._seen = cycle
            if cycle.more_body:
                self._arm("body", self.body_timeout_s)
            else:
                self._disarm()
        elif self._phase == "body" and cycle is not None and not cycle.more_body:
            self._disarm()

    def _arm(self, phase: str, timeout_s: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        metrics.REQUEST_TIMEOUTS.labels(self._phase).inc()
        self.transport.close()


class _Bucket:
    __slots__ = ("rate", "tokens", "at")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def take(self, n: float, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        return self.tokens >= 0


_COUNTED = (events.Message, events.Ping, events.Pong)


class RawWrite:
    """`scope["extensions"]["livefeed.ws.write"]` of one connection (the app's side is
    `gateway.ws.RawWriter`): whole frames the app encoded, written as uvicorn writes its
    own, with uvicorn's flow control left to the caller.

    Frames from here are whole and written synchronously, so they never interleave with
    uvicorn's own (pongs, the close frame): wsproto keeps no state for unfragmented
    messages a server sends, so its close logic still runs as usual. A write is refused
    (None) unless the connection is open: handshake done, no close sent (by the app or by
    the protocol's 1008/1009) or received, socket not closing."""

    __slots__ = ("_ws",)

    def __init__(self, ws: WSProtocol) -> None:
        self._ws = ws

    def write(self, frame: bytes) -> int | None:
        """Write one encoded frame; the bytes then waiting in the transport's buffer, or
        None (nothing written) once the connection is not open."""
        ws = self._ws
        transport = ws.transport
        if ws.close_sent or ws.conn.state is not ConnectionState.OPEN or \
                transport.is_closing():
            return None
        transport.write(frame)
        return transport.get_write_buffer_size()

    @property
    def paused(self) -> bool:
        """The transport asked for no more writes (its buffer is over the high-water mark):
        uvicorn's own `send` waits for `drain` then, and so should the caller."""
        return not self._ws.writable.is_set()

    async def drain(self) -> None:
        """Until the transport takes writes again (or the connection is lost)."""
        await self._ws.writable.wait()


class BoundedWs(WSProtocol):
    """uvicorn's wsproto protocol with a bound on inbound frames and bytes per second, and
    the raw-write extension (`RawWrite`)."""

    messages_per_s: ClassVar[float] = 10.0
    bytes_per_s: ClassVar[float] = 16_384

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._frames = _Bucket(self.messages_per_s)
        self._bytes = _Bucket(self.bytes_per_s)

    def handle_connect(self, event: events.Request) -> None:
        super().handle_connect(event)
        # The app's task was created above but has not run yet: it sees the extension.
        self.scope["extensions"][RAW_WRITE] = RawWrite(self)  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # Before the handshake completes the bytes are the upgrade request (bounded by the
        # HTTP protocol's header deadline and httptools).
        if self.handshake_complete and not self.close_sent and \
                not self._bytes.take(len(data), time.monotonic()):
            self._too_fast("inbound bytes per second exceeded")
        # Parsed even then (frames must stay aligned): after the close, only the client's
        # close frame is acted on.
        super().data_received(data)

    def handle_events(self) -> None:
        # uvicorn's dispatch, with every frame counted (pings and fragments too) first.
        now = time.monotonic()
        for event in self.conn.events():
            if self.close_sent:
                if isinstance(event, events.CloseConnection):
                    self.handle_close(event)
                continue
            if self.handshake_complete and isinstance(event, _COUNTED) and \
                    not self._frames.take(1, now):
                self._too_fast("inbound messages per second exceeded")
            elif isinstance(event, events.Request):
                self.handle_connect(event)
            elif isinstance(event, events.TextMessage | events.BytesMessage):
                self.handle_message(event)
            elif isinstance(event, events.CloseConnection):
                self.handle_close(event)
            elif isinstance(event, events.Ping):
                self.handle_ping(event)
            elif isinstance(event, events.Pong):
                self.handle_pong(event)

    def handle_message(self, event: events.TextMessage | events.BytesMessage) -> None:
        closed = self.close_sent
        super().handle_message(event)
        if self.close_sent and not closed:  # over ws_max_size: uvicorn closed with 1009
            metrics.WS_INBOUND_CLOSES.labels(str(MESSAGE_TOO_BIG)).inc()

    def _too_fast(self, reason: str) -> None:
        """Close with 1008 as uvicorn closes for the app: the close frame, then the client's
        answer (or `close_timeout`) before the socket goes, so the close frame is not lost
        to a reset while the client is still sending. What it sends meanwhile is read and
        dropped."""
        metrics.WS_INBOUND_CLOSES.labels(str(POLICY_VIOLATION)).inc()
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": POLICY_VIOLATION,
                               "reason": reason})
        if self.transport.is_closing():
            return
        self.transport.write(self.conn.send(
            wsproto.events.CloseConnection(code=POLICY_VIOLATION, reason=reason)))
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

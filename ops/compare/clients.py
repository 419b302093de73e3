"""Real WebSocket clients that log every frame with its receive time.

A client behaves as the browser client does: it keeps the feed id of the last event it
saw and sends it back as `last_id` when it reconnects; after a server-side close it
reconnects with backoff, moving on to the next gateway when one refuses. The harness can
also keep it away for a window (`drop` / `come_back`) or make it read slowly.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from livefeed.ops.compare.records import Away, ClientLog, Connection, Received
from livefeed.schemas.frames import EventFrame, Hello, Recovered, Reset, decode_frame, split_message

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0
MAX_BACKOFF_S = 1.0
# A slow reader's socket: a small receive buffer, an internet-sized MSS and a short frame
# queue. On loopback (MSS 64 KB) the gateway's send buffer would autotune to megabytes and
# absorb minutes of backlog; with a 1200-byte MSS it stays small, as it does for a real
# browser, so the gateway's send queue fills within seconds.
SLOW_RCVBUF = 4096
SLOW_MSS = 1200
SLOW_MAX_QUEUE = 2


class _EventId(msgspec.Struct):
    id: str


_event_id = msgspec.json.Decoder(_EventId)


class NotReady(Exception):
    """A client did not get its `hello` (and replay) in time."""


class FeedClient:
    """One browser-like WebSocket client of `user`, logging into `self.log`."""

    def __init__(
        self,
        name: str,
        user: str,
        token: str,
        gateways: Sequence[str],
        *,
        clock: Callable[[], float],
        mode: str,
        first_gateway: int = 0,
        small_buffer: bool = False,
    ) -> None:
        self.log = ClientLog(name=name, user=user)
        self.token = token
        self.gateways = [urlsplit(g)._replace(scheme="ws").geturl() for g in gateways]
        self.clock = clock
        self.mode = mode
        self.small_buffer = small_buffer
        self.read_delay = 0.0
        self.last_id: str | None = None
        self.seen: set[str] = set()
        self.protocol_errors = 0
        self._gw = first_gateway
        self._ws: ClientConnection | None = None
        self._want_up = anyio.Event()
        self._want_up.set()
        self._stopping = False
        self._ready = anyio.Event()
        self._down_at: float | None = None

    @property
    def away(self) -> bool:
        return not self._want_up.is_set()

    @property
    def gateway_index(self) -> int:
        return self._gw % len(self.gateways)

    @property
    def gateway(self) -> str:
        return self.gateways[self.gateway_index]

    async def run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            await self._want_up.wait()
            if self._stopping:
                break
            conn = Connection(gateway=self.gateway, t_open=self.clock())
            try:
                ws = await self._connect(self.gateway)
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                logger.debug("%s: connect to %s failed: %s", self.log.name, self.gateway, exc)
                self._gw += 1
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            self.log.connections.append(conn)
            if self._stopping or not self._want_up.is_set():  # dropped while connecting
                conn.by_harness = True
                await ws.close()
                conn.t_closed = self.clock()
                continue
            self._ws = ws
            try:
                await self._read(ws, conn)
            except ConnectionClosed as exc:
                conn.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
            finally:
                self._ws = None
                conn.t_closed = self.clock()
                if self._ready.is_set():
                    self._ready = anyio.Event()
            if conn.by_harness or self._stopping:
                continue
            if conn.t_ready is not None:
                backoff = 0.05
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _connect(self, base: str) -> ClientConnection:
        uri = f"{base}/v1/ws"
        if self.last_id is not None:
            uri += "?" + urlencode({"last_id": self.last_id})
        options: dict[str, Any] = {
            "open_timeout": 5, "ping_interval": None, "compression": None, "close_timeout": 2,
            "additional_headers": {"authorization": f"Bearer {self.token}"},
        }
        if self.small_buffer:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_MSS)
            sock.setblocking(False)
            parts = urlsplit(base)
            try:
                with anyio.fail_after(5):
                    await asyncio.get_running_loop().sock_connect(
                        sock, (parts.hostname or "127.0.0.1", parts.port or 80))
            except BaseException:
                sock.close()
                raise
            options.update(sock=sock, max_queue=SLOW_MAX_QUEUE)
        return await connect(uri, **options)

    async def _read(self, ws: ClientConnection, conn: Connection) -> None:
        expect_replay = self.mode == "streams" and self.last_id is not None
        async for message in ws:
            t = self.clock()
            for raw in split_message(message):
                self._take(raw, conn, t, expect_replay)
            if self.read_delay > 0:
                await anyio.sleep(self.read_delay)

    def _take(self, raw: bytes, conn: Connection, t: float, expect_replay: bool) -> None:
        try:
            frame = decode_frame(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.protocol_errors += 1
            return
        match frame:
            case EventFrame(id=feed_id, data=data):
                try:
                    event_id = _event_id.decode(data).id
                except (msgspec.DecodeError, msgspec.ValidationError):
                    self.protocol_errors += 1
                    return
                self.log.received.append(
                    Received(t=t, event_id=event_id, feed_id=feed_id,
                             conn=len(self.log.connections) - 1))
                self.seen.add(event_id)
                self.last_id = feed_id
            case Hello():
                if not expect_replay:
                    self._mark_ready(conn, t)
            case Recovered(count=count):
                conn.recovered = count
                self._mark_ready(conn, t)
            case Reset(reason=reason):
                conn.reset = reason
                self._mark_ready(conn, t)

    def _mark_ready(self, conn: Connection, t: float) -> None:
        if conn.t_ready is None:
            conn.t_ready = t
            self._ready.set()

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait until the current connection is live (hello, and replay done); its time."""
        try:
            with anyio.fail_after(timeout):
                await self._ready.wait()
        except TimeoutError:
            raise NotReady(f"{self.log.name} not ready after {timeout:.0f}s "
                           f"(gateway {self.gateway})") from None
        t = self.log.connections[-1].t_ready
        assert t is not None
        return t

    async def drop(self) -> None:
        """Close the connection now and stay away until `come_back`."""
        self._want_up = anyio.Event()
        if self._ready.is_set():
            self._ready = anyio.Event()
        ws = self._ws
        if ws is not None:
            if self.log.connections:
                self.log.connections[-1].by_harness = True
            await ws.close()
        self._down_at = self.clock()

    async def come_back(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Reconnect with the last id; returns once live again and logs the away window."""
        assert self._down_at is not None, "come_back() without drop()"
        self._want_up.set()
        up = await self.wait_ready(timeout)
        self.log.away.append(Away(down=self._down_at, up=up))
        self._down_at = None

    async def stop(self) -> None:
        self._stopping = True
        self._want_up.set()
        ws = self._ws
        if ws is not None:
            if self.log.connections:
                self.log.connections[-1].by_harness = True
            await ws.close()

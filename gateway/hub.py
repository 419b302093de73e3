"""The gateway's one pub/sub connection: live frames of the users connected to this process.

A user's channel is subscribed while at least one local session of that user is open
(reference-counted across tabs) and unsubscribed when the last one leaves. A single
reader task owns the connection; sessions are called back synchronously and never block
it. Pub/sub is only the live wire: when the link fails or goes silent, the hub reconnects
with backoff, subscribes again and asks every session to re-sync from its feed stream,
so a lost link costs a delay, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from livefeed.core import metrics
from livefeed.core.keys import Keys
from livefeed.gateway.feature import Feature
from livefeed.gateway.sessions import Sessions
from livefeed.gateway.state import GatewayState

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 5.0
JOIN_TIMEOUT_S = 5.0
_PING = b"lf-hub"
_LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class Listener(Protocol):
    """A local session as the hub sees it. Both calls must return without blocking."""

    def on_live(self, frame: bytes) -> None: ...

    def on_resync(self) -> None: ...


class _Sub:
    __slots__ = ("channel", "listeners", "confirmed", "resync")

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.listeners: set[Listener] = set()
        # A bare future, not an Event: there is one sub per connected user (an Event costs
        # ~1 KiB); set once Redis confirms the SUBSCRIBE.
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.resync = False


class StaleLink(Exception):
    """The pub/sub connection stopped answering PINGs."""


class Hub:
    """One pub/sub connection per gateway process, shared by all its sessions."""

    def __init__(self, redis_url: str, keys: Keys, *, ping_interval_s: float = PING_INTERVAL_S,
                 name: str | None = None) -> None:
        self.keys = keys
        self.ping_interval_s = ping_interval_s
        # Scoped by prefix so operators (and tests) can find and kill exactly this link.
        self.name = name or f"{keys.prefix}-hub-{os.getpid()}-{secrets.token_hex(3)}"
        # No retries and no redis-py health check: redis-py would silently reconnect and
        # resubscribe, hiding the messages lost meanwhile; we must see every failure.
        self._client: Any = aioredis.Redis.from_url(
            redis_url, socket_timeout=None, socket_connect_timeout=5.0,
            retry=Retry(NoBackoff(), 0), client_name=self.name, protocol=2,
        )
        self._pubsub: Any = None
        self._subs: dict[str, _Sub] = {}
        self._channels: dict[bytes, _Sub] = {}  # the same subs by channel, for dispatch
        # Subs waiting for Redis to confirm their SUBSCRIBE, per channel, in command order.
        self._pending: dict[bytes, deque[_Sub]] = {}
        self._lock = anyio.Lock()
        self.healthy = False
        self.connected_once = anyio.Event()
        self._last_rx = 0.0

    # -- sessions -------------------------------------------------------------------------

    def local_users(self) -> int:
        return len(self._subs)

    @contextlib.asynccontextmanager
    async def subscribe(self, user: str, listener: Listener) -> AsyncIterator[bool]:
        """`user`'s live frames go to `listener` inside the block; counted out on the way
        out, whatever ends the block. Yields True once the channel is subscribed, False
        after JOIN_TIMEOUT_S with the link down; either way the listener is asked to re-sync
        when a new link confirms the channel."""
        try:
            yield await self._join(user, listener)
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave(user, listener)

    async def _join(self, user: str, listener: Listener) -> bool:
        async with self._lock:
            sub = self._subs.get(user)
            if sub is None:
                channel = self.keys.live(user).encode()
                sub = self._subs[user] = self._channels[channel] = _Sub(channel)
                if self._pubsub is not None and self.healthy:
                    await self._subscribe([(user, sub)])
            sub.listeners.add(listener)
        if not sub.confirmed.done():
            # asyncio.wait: a timeout must not cancel the future other tabs wait on too.
            await asyncio.wait((sub.confirmed,), timeout=JOIN_TIMEOUT_S)
        return sub.confirmed.done()

    async def _leave(self, user: str, listener: Listener) -> None:
        async with self._lock:
            sub = self._subs.get(user)
            if sub is None:
                return
            sub.listeners.discard(listener)
            if sub.listeners:
                return
            del self._subs[user]
            del self._channels[sub.channel]
            if self._pubsub is not None and self.healthy:
                with contextlib.suppress(*_LINK_ERRORS):
                    await self._pubsub.unsubscribe(self.keys.live(user))

    async def _subscribe(self, subs: list[tuple[str, _Sub]]) -> None:
        channels = []
        for _, sub in subs:
            self._pending.setdefault(sub.channel, deque()).append(sub)
            channels.append(sub.channel)
        try:
            await self._pubsub.subscribe(*channels)
        except _LINK_ERRORS as exc:
            # The reader sees the same failure, reconnects and subscribes everyone again.
            logger.info("SUBSCRIBE failed (%r); waiting for the reader to reconnect", exc)

    # -- the reader -----------------------------------------------------------------------

    async def run(self) -> None:
        """Own the connection until cancelled: read, dispatch, reconnect with backoff."""
        backoff = 0.05
        first = True
        while True:
            try:
                await self._open()
                if not first:
                    metrics.PUBSUB_RECONNECTS.inc()
                    logger.warning("pub/sub link back; re-syncing %d users", len(self._subs))
                first = False
                backoff = 0.05
                self.connected_once.set()
                await self._read()
            except (*_LINK_ERRORS, StaleLink) as exc:
                if self.healthy:
                    logger.warning("pub/sub link lost: %r", exc)
            finally:
                self.healthy = False
                await self._drop()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _open(self) -> None:
        pubsub = self._client.pubsub()
        async with self._lock:
            self._pubsub = pubsub
            await pubsub.ping(_PING)
            subs = list(self._subs.items())
            # Every user subscribed on a new link re-syncs once Redis confirms the channel:
            # whatever was published while the link was down is in their feed stream.
            for _, sub in subs:
                sub.resync = True
            if subs:
                await self._subscribe(subs)
            self.healthy = True

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._pending.clear()
        if pubsub is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(*_LINK_ERRORS):
                await pubsub.aclose()

    async def _read(self) -> None:
        """Block on the link and dispatch; a watchdog pings the link when it idles and ends
        the read when it stays silent. (A read timeout per message would cost redis-py a
        timer per message: a large part of the fan-out's CPU.)"""
        pubsub = self._pubsub
        self._last_rx = time.monotonic()
        failure: list[Exception] = []
        with anyio.CancelScope() as scope:
            watchdog = asyncio.create_task(self._watch(pubsub, scope, failure))
            try:
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    self._last_rx = time.monotonic()
                    if msg is not None:
                        self._dispatch(msg)
            finally:
                watchdog.cancel()
        raise failure[0] if failure else StaleLink("watchdog ended the read")

    async def _watch(self, pubsub: Any, reader: anyio.CancelScope,
                     failure: list[Exception]) -> None:
        interval = self.ping_interval_s
        last_ping = time.monotonic()
        try:
            while True:
                await anyio.sleep(min(1.0, interval))
                now = time.monotonic()
                silent = now - self._last_rx
                if silent > 2 * interval + 1:
                    failure.append(StaleLink(f"no reply for {silent:.1f}s"))
                    break
                if now - last_ping >= interval and silent >= interval:
                    last_ping = now
                    # Bounded: a write stuck on a dead link must not stop the silence check.
                    with anyio.move_on_after(interval):
                        async with self._lock:
                            await pubsub.ping(_PING)
        except _LINK_ERRORS as exc:
            failure.append(exc)
        reader.cancel()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "message":
            sub = self._channels.get(msg["channel"])
            if sub is not None:
                # No copy: listeners never join or leave synchronously from on_live.
                data = msg["data"]
                for listener in sub.listeners:
                    listener.on_live(data)
        elif kind == "subscribe":
            pending = self._pending.get(msg["channel"])
            if not pending:
                return
            sub = pending.popleft()
            if not pending:
                del self._pending[msg["channel"]]
            if not sub.confirmed.done():
                sub.confirmed.set_result(None)
            if sub.resync:
                sub.resync = False
                for listener in list(sub.listeners):
                    listener.on_resync()

    async def aclose(self) -> None:
        await self._drop()
        with contextlib.suppress(*_LINK_ERRORS):
            await self._client.aclose()


@contextlib.asynccontextmanager
async def lifespan(state: GatewayState) -> AsyncIterator[None]:
    """Start the process's hub (`state.hub`) and the registry of its live sessions
    (`state.sessions`, stopped when `state.draining` is set)."""
    assert state.settings.redis_url is not None  # create_app checks it
    hub = Hub(state.settings.redis_url, state.keys)
    sessions = Sessions()
    state.hub, state.sessions = hub, sessions
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            tg.start_soon(sessions.drain_on, state.draining)
            with anyio.move_on_after(JOIN_TIMEOUT_S):
                await hub.connected_once.wait()
            try:
                yield
            finally:
                sessions.drain()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await hub.aclose()


# Live delivery's resources (no routes of its own): the WebSocket and SSE features need it.
FEATURE = Feature("hub", lifespan=lifespan)

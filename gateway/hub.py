"""The gateway's pub/sub links: live frames of the users connected to this process.

A user's channel is subscribed while at least one local session of that user is open
(reference-counted across tabs) and unsubscribed when the last one leaves. Sessions are
called back synchronously and never block a reader.

One link (a plain connection with its own reader task and watchdog) per Redis node: one
on a standalone server; on a cluster one per primary, each channel subscribed with
SSUBSCRIBE on the primary that owns its slot. Links never share a reader loop, so one
stalled node cannot delay the others (redis-py's ClusterPubSub reads all nodes from one
loop, and went silent after a slot move: it is not used).

Pub/sub is only the live wire. When a link fails or goes silent, when the server pushes
`sunsubscribe` (the slot moved) or a failover moves a slot, the hub looks the slot up
again, subscribes the channel where it now lives and asks exactly the sessions of the
affected users to re-sync from their feed streams: a lost link costs a delay, never an
event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import anyio
import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ResponseError

from livefeed.core import metrics, redis_client
from livefeed.core.errors import REDIS_UNAVAILABLE
from livefeed.core.keys import Keys
from livefeed.core.topology import STANDALONE, Topology
from livefeed.gateway.feature import Feature
from livefeed.gateway.sessions import Sessions
from livefeed.gateway.state import GatewayState
from livefeed.schemas.article import to_event_frame

logger = logging.getLogger(__name__)

PING_INTERVAL_S = 5.0
JOIN_TIMEOUT_S = 5.0
SUBSCRIBE_BATCH = 500
_PING = b"lf-hub"
# A reply error on the link (MOVED for a channel whose slot moved) ends it like a failure:
# the hub looks the slot up again.
_LINK_ERRORS = (*REDIS_UNAVAILABLE, ResponseError)


class Listener(Protocol):
    """A local session as the hub sees it. Both calls must return without blocking."""

    def on_live(self, frame: bytes) -> None: ...

    def on_live_many(self, frames: list[bytes]) -> None:
        """Several frames of the channel that arrived together, in order (one list for
        every listener of the channel: never changed)."""
        ...

    def on_resync(self) -> None: ...


class _Sub:
    __slots__ = ("user", "channel", "listeners", "confirmed", "resync", "link", "idle_since")

    def __init__(self, user: str, channel: bytes) -> None:
        self.user = user
        self.channel = channel
        self.listeners: set[Listener] = set()
        # A bare future, not an Event: there is one sub per connected user (an Event costs
        # ~1 KiB); set once Redis confirms the subscription.
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.resync = False
        self.link: _Link | None = None
        self.idle_since = 0.0  # when its last listener left (a lingering channel)


class StaleLink(Exception):
    """The pub/sub connection stopped answering PINGs."""


class _Moved(Exception):
    """The server dropped a channel of ours (`sunsubscribe`): its slot lives elsewhere."""


class _Link:
    """One pub/sub connection to one node, its reader and its watchdog."""

    def __init__(self, hub: Hub, node: str, client: Any) -> None:
        self.hub = hub
        self.node = node
        self.client = client
        self.subs: dict[bytes, _Sub] = {}
        # Subs waiting for Redis to confirm their subscription, per channel, in order.
        self.pending: dict[bytes, deque[_Sub]] = {}
        self.pubsub: Any = None
        self.healthy = False
        self.closed = False
        self.last_rx = 0.0
        self.lock = anyio.Lock()
        self.subscribe_cmd = "ssubscribe" if hub.sharded else "subscribe"
        self.unsubscribe_cmd = "sunsubscribe" if hub.sharded else "unsubscribe"
        self.message_type = "smessage" if hub.sharded else "message"
        self.confirm_type = "ssubscribe" if hub.sharded else "subscribe"

    async def subscribe(self, subs: list[_Sub]) -> None:
        if self.pubsub is None or not self.healthy:
            return  # subscribed when the link (re)opens
        for part in self._batches(subs):
            for sub in part:
                self.pending.setdefault(sub.channel, deque()).append(sub)
            try:
                await getattr(self.pubsub, self.subscribe_cmd)(*[s.channel for s in part])
            except _LINK_ERRORS as exc:
                # The reader sees the same failure, reconnects and subscribes everyone.
                logger.info("%s on %s failed (%r); the reader reconnects",
                            self.subscribe_cmd.upper(), self.node, exc)
                return

    def _batches(self, subs: list[_Sub]) -> list[list[_Sub]]:
        """Subscriptions of up to SUBSCRIBE_BATCH channels; SSUBSCRIBE takes the channels
        of one slot only (a partition's channels share it), so sharded batches are per slot."""
        if not self.hub.sharded:
            return [subs[i : i + SUBSCRIBE_BATCH] for i in range(0, len(subs), SUBSCRIBE_BATCH)]
        by_slot: dict[int, list[_Sub]] = {}
        for sub in subs:
            by_slot.setdefault(key_slot(sub.channel), []).append(sub)
        return [group[i : i + SUBSCRIBE_BATCH] for group in by_slot.values()
                for i in range(0, len(group), SUBSCRIBE_BATCH)]

    async def unsubscribe(self, subs: list[_Sub]) -> None:
        if self.pubsub is None or not self.healthy:
            return  # a link that reopens subscribes only the channels still in `subs`
        for part in self._batches(subs):
            with contextlib.suppress(*_LINK_ERRORS):
                await getattr(self.pubsub, self.unsubscribe_cmd)(*[s.channel for s in part])

    async def run(self) -> None:
        """Own the connection until closed: read, dispatch, reconnect with backoff."""
        backoff = 0.05
        first = True
        while not self.closed:
            try:
                await self._open()
                if not first:
                    metrics.PUBSUB_RECONNECTS.inc()
                    logger.warning("pub/sub link to %s back; re-syncing %d users", self.node,
                                   len(self.subs))
                first = False
                backoff = 0.05
                self.hub.connected_once.set()
                await self._read()
            except (*_LINK_ERRORS, StaleLink, _Moved) as exc:
                if self.healthy:
                    logger.warning("pub/sub link to %s lost: %r", self.node, exc)
            finally:
                self.healthy = False
                await self._drop()
            if self.closed:
                return
            # The node may be gone for good (a failover): home the channels again.
            await self.hub.rehome(self)
            if self.closed:
                return
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _open(self) -> None:
        pubsub = self.client.pubsub()
        async with self.lock:
            self.pubsub = pubsub
            await pubsub.ping(_PING)
            subs = list(self.subs.values())
            # Every user subscribed on a new link re-syncs once Redis confirms the channel:
            # whatever was published while the link was down is in their feed stream.
            for sub in subs:
                sub.resync = True
            self.healthy = True
            if subs:
                await self.subscribe(subs)

    async def _drop(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        self.pending.clear()
        if pubsub is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(*_LINK_ERRORS):
                await pubsub.aclose()

    async def _read(self) -> None:
        """Block on the link and dispatch; the watchdog pings the link when it idles and
        ends the read when it stays silent. (A read timeout per message would cost
        redis-py a timer per message: a large part of the fan-out's CPU.)"""
        pubsub = self.pubsub
        self.last_rx = time.monotonic()
        failure: list[Exception] = []
        with anyio.CancelScope() as scope:
            watchdog = asyncio.create_task(self._watch(pubsub, scope, failure))
            try:
                data_kind = self.message_type.encode()
                buffered = buffered_replies(pubsub)
                while True:
                    # A published message is dispatched as Redis sent it; redis-py's
                    # handle_message (a dict, a metrics hook, a handler lookup per message:
                    # ~5 µs, a good part of a frame to a user's only tab) only sees the
                    # rest (confirmations, pongs, pushed unsubscribes).
                    reply = await pubsub.parse_response(block=True)
                    self.last_rx = time.monotonic()
                    # The messages read off the socket together, delivered together (in
                    # order, before any other reply): a channel's burst goes to each of
                    # its sessions at once, which writes it as one message.
                    burst: list[Any] = []
                    while True:
                        if type(reply) is list and reply[0] == data_kind:
                            burst.append(reply)
                        elif reply is not None:
                            if burst:
                                self._deliver_burst(burst)
                                burst = []
                            if isinstance(reply, Exception):
                                raise reply  # an error reply, as parse_response raises it
                            msg = await pubsub.handle_message(reply)
                            if msg is not None:
                                self._dispatch(msg)
                        # The replies already read off the socket, without parse_response's
                        # async path for each (~3.5 µs a message: a burst arrives in one
                        # read of up to 64 KiB).
                        if buffered is None:
                            break
                        reply = buffered()
                        if reply is NOT_ENOUGH_DATA:
                            break
                    if burst:
                        self._deliver_burst(burst)
            finally:
                watchdog.cancel()
        raise failure[0] if failure else StaleLink("watchdog ended the read")

    async def _watch(self, pubsub: Any, reader: anyio.CancelScope,
                     failure: list[Exception]) -> None:
        interval = self.hub.ping_interval_s
        last_ping = time.monotonic()
        try:
            while True:
                await anyio.sleep(min(1.0, interval))
                now = time.monotonic()
                silent = now - self.last_rx
                if silent > 2 * interval + 1:
                    failure.append(StaleLink(f"no reply for {silent:.1f}s"))
                    break
                if now - last_ping >= interval and silent >= interval:
                    last_ping = now
                    # Bounded: a write stuck on a dead link must not stop the silence check.
                    with anyio.move_on_after(interval):
                        async with self.lock:
                            await pubsub.ping(_PING)
        except _LINK_ERRORS as exc:
            failure.append(exc)
        reader.cancel()

    def _deliver_burst(self, burst: list[Any]) -> None:
        """The data messages (`[kind, channel, data]`) of one read, in order."""
        if len(burst) == 1:
            self._deliver(burst[0][1], burst[0][2])
            return
        if len({reply[1] for reply in burst}) == len(burst):  # every channel once (users)
            for reply in burst:
                self._deliver(reply[1], reply[2])
            return
        by_channel: dict[bytes, list[bytes]] = {}
        for reply in burst:
            by_channel.setdefault(reply[1], []).append(reply[2])
        for channel, frames in by_channel.items():
            if len(frames) == 1:
                self._deliver(channel, frames[0])
            else:
                self._deliver_many(channel, frames)

    def _deliver_many(self, channel: bytes, frames: list[bytes]) -> None:
        sub = self.subs.get(channel)
        if sub is None:
            return
        if self.hub.translate is not None:  # `list` mode (comparison only): one by one
            for data in frames:
                self._deliver(channel, data)
            return
        for listener in sub.listeners:
            listener.on_live_many(frames)

    def _deliver(self, channel: bytes, data: bytes) -> None:
        sub = self.subs.get(channel)
        if sub is None:
            return
        if self.hub.translate is not None:  # `list` mode: the article's message
            translated = self.hub.translate(data)
            if translated is None:
                logger.warning("dropping a live message on %r that is no new_newsletter",
                               channel)
                return
            data = translated
        # No copy: listeners never join or leave synchronously from on_live.
        for listener in sub.listeners:
            listener.on_live(data)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == self.message_type:
            self._deliver(msg["channel"], msg["data"])
        elif kind == self.confirm_type:
            pending = self.pending.get(msg["channel"])
            if not pending:
                return
            sub = pending.popleft()
            if not pending:
                del self.pending[msg["channel"]]
            if not sub.confirmed.done():
                sub.confirmed.set_result(None)
            if sub.resync:
                sub.resync = False
                for listener in list(sub.listeners):
                    listener.on_resync()
        elif kind == "sunsubscribe":
            moved = self.subs.get(msg["channel"])
            if moved is not None and moved.link is self:
                # Pushed by the server, not asked for: the slot moved to another node.
                self.hub.moved(self, moved)


def buffered_replies(pubsub: Any) -> Callable[[], Any] | None:
    """The next reply `pubsub`'s connection has read already, or NOT_ENOUGH_DATA: its
    hiredis reader's `gets` (redis-py's own parser reads the socket into it in chunks and
    takes one reply per call). None where the parser is not hiredis's: every reply then
    goes through `parse_response`. tests/gateway/test_hub.py checks this redis-py still
    offers it, so an upgrade that moves it fails there instead of slowing down quietly."""
    parser = getattr(getattr(pubsub, "connection", None), "_parser", None)
    if not isinstance(parser, _AsyncHiredisParser):
        return None
    gets: Callable[[], Any] | None = getattr(getattr(parser, "_reader", None), "gets", None)
    return gets


class Hub:
    """The pub/sub links of one gateway process, shared by all its sessions."""

    def __init__(self, redis_url: str, keys: Keys, *, ping_interval_s: float = PING_INTERVAL_S,
                 name: str | None = None, cluster: bool = False,
                 channel: Callable[[str], str] | None = None,
                 translate: Callable[[bytes], bytes | None] | None = None,
                 linger_s: float = 0.0) -> None:
        """`channel`: a user's channel name (default `keys.live`); `translate`: turns each
        message into the frame the sessions get (None drops it); `linger_s`: how long a
        user's channel stays subscribed after its last session left (0: unsubscribed at
        once), so a reconnect within it (a page load, a dropped network) subscribes
        nothing."""
        self.keys = keys
        self.linger_s = linger_s
        self.channel = channel or keys.live
        self.translate = translate
        self.ping_interval_s = ping_interval_s
        self.sharded = cluster
        # Scoped by prefix so operators (and tests) can find and kill exactly these links.
        self.name = name or f"{keys.prefix}-hub-{os.getpid()}-{secrets.token_hex(3)}"
        # No retries and no redis-py health check: redis-py would silently reconnect and
        # resubscribe, hiding the messages lost meanwhile; we must see every failure.
        options: dict[str, Any] = dict(socket_timeout=None, socket_connect_timeout=5.0,
                                       retry=Retry(NoBackoff(), 0), client_name=self.name,
                                       protocol=2)
        self._url = redis_url
        self._options = options
        self._topology: Topology | None = None
        if cluster:
            self._topology = Topology(redis_client.connect(redis_url, cluster=True),
                                      cluster=True, **options)
        self._links: dict[str, _Link] = {}
        self._subs: dict[str, _Sub] = {}
        # The lingering subs (no listener), oldest first: unsubscribed once `linger_s` old.
        self._idle: dict[str, _Sub] = {}
        self._lock = anyio.Lock()
        self._tg: Any = None
        self._moves: asyncio.Queue[tuple[_Link, _Sub]] = asyncio.Queue()
        self.connected_once = anyio.Event()

    @property
    def healthy(self) -> bool:
        return bool(self._links) and all(link.healthy for link in self._links.values())

    def local_users(self) -> int:
        """Users with a session here (not counting the channels lingering after one)."""
        return len(self._subs) - len(self._idle)

    def channels(self) -> int:
        """Channels subscribed, lingering ones included."""
        return len(self._subs)

    def listeners(self) -> int:
        """Sessions subscribed through this hub, over all users."""
        return sum(len(sub.listeners) for sub in self._subs.values())

    # -- sessions -------------------------------------------------------------------------

    def subscribe(self, user: str, listener: Listener) -> _Subscription:
        """`user`'s live frames go to `listener` inside the block; counted out on the way
        out, whatever ends the block. Yields True once the channel is subscribed, False
        after JOIN_TIMEOUT_S with the link down; either way the listener is asked to re-sync
        when a new link confirms the channel."""
        return _Subscription(self, user, listener)

    async def _join(self, user: str, listener: Listener) -> bool:
        async with self._lock:
            sub = self._subs.get(user)
            if sub is None:
                sub = self._subs[user] = _Sub(user, self.channel(user).encode())
                await self._home(sub)
            elif not sub.listeners:
                self._idle.pop(user, None)  # lingering: subscribed already (or as the link reopens)
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
            if self.linger_s > 0:
                sub.idle_since = time.monotonic()
                self._idle[user] = sub
                return
            await self._unsubscribe([sub])

    async def _unsubscribe(self, subs: list[_Sub]) -> None:
        """Drop these users' channels (the hub's lock held)."""
        by_link: dict[_Link, list[_Sub]] = {}
        for sub in subs:
            del self._subs[sub.user]
            link, sub.link = sub.link, None
            if link is not None:
                link.subs.pop(sub.channel, None)
                by_link.setdefault(link, []).append(sub)
        for link, part in by_link.items():
            await link.unsubscribe(part)

    async def _expire_idle(self) -> None:
        """Unsubscribe the channels that lingered `linger_s` without a session, checked
        every half of it (50 ms at least): one timer for the hub, one UNSUBSCRIBE per batch
        of channels."""
        while True:
            await anyio.sleep(max(self.linger_s / 2, 0.05))
            if not self._idle:
                continue
            async with self._lock:
                before = time.monotonic() - self.linger_s
                expired = []
                for sub in self._idle.values():
                    if sub.idle_since > before:
                        break  # oldest first: the rest are younger
                    expired.append(sub)
                for sub in expired:
                    del self._idle[sub.user]
                await self._unsubscribe(expired)

    # -- homing channels on nodes ---------------------------------------------------------

    def _node_of(self, channel: bytes) -> str:
        return STANDALONE if self._topology is None else self._topology.node_of(
            channel.decode())

    def _link(self, node: str) -> _Link:
        link = self._links.get(node)
        if link is None:
            if self._topology is None:
                client = aioredis.Redis.from_url(self._url, **self._options)
            else:
                client = self._topology.node_client(node)
            link = self._links[node] = _Link(self, node, client)
            if self._tg is not None:
                self._tg.start_soon(link.run)
        return link

    async def _home(self, sub: _Sub, *, resync: bool = False) -> None:
        """Subscribe `sub` on the link of the node that owns its channel now."""
        link = self._link(self._node_of(sub.channel))
        sub.link = link
        sub.resync = sub.resync or resync
        link.subs[sub.channel] = sub
        async with link.lock:
            await link.subscribe([sub])

    async def rehome(self, failed: _Link) -> None:
        """After `failed` lost its connection: look the slots up again and move every
        channel that lives elsewhere now; re-sync its sessions once subscribed there."""
        if self._topology is None:
            return  # one node: the link reconnects and re-syncs its own users
        await self._topology.refresh()
        async with self._lock:
            for sub in list(failed.subs.values()):
                if self._node_of(sub.channel) != failed.node:
                    failed.subs.pop(sub.channel, None)
                    await self._home(sub, resync=True)
            if not failed.subs and failed.node not in self._topology.primaries():
                failed.closed = True  # a node that is no longer a primary
                self._links.pop(failed.node, None)

    def moved(self, link: _Link, sub: _Sub) -> None:
        self._moves.put_nowait((link, sub))

    async def _handle_moves(self) -> None:
        while True:
            link, sub = await self._moves.get()
            if self._topology is not None:
                await self._topology.refresh()
            async with self._lock:
                if sub.link is not link or self._subs.get(sub.user) is not sub:
                    continue
                logger.info("channel %s moved off %s; re-homing", sub.channel, link.node)
                link.subs.pop(sub.channel, None)
                await self._home(sub, resync=True)

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every link (one per primary) until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._handle_moves)
            if self.linger_s > 0:
                tg.start_soon(self._expire_idle)
            if self._topology is not None:
                await self._start_cluster()
            else:
                self._link(STANDALONE)
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    async def _start_cluster(self) -> None:
        assert self._topology is not None
        delay = 0.05
        while True:
            try:
                await self._topology.ready()
                break
            except _LINK_ERRORS as exc:
                logger.warning("cluster unreachable (%r); retrying", exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
        for node in self._topology.primaries():
            self._link(node)

    async def aclose(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            link.closed = True
            await link._drop()
            if self._topology is None:
                with contextlib.suppress(*_LINK_ERRORS):
                    await link.client.aclose()
        if self._topology is not None:
            await self._topology.aclose()
            with contextlib.suppress(*_LINK_ERRORS):
                await self._topology.client.aclose()


@contextlib.asynccontextmanager
async def lifespan(state: GatewayState) -> AsyncIterator[None]:
    """Start the process's hub (`state.hub`) and the registry of its live sessions
    (`state.sessions`, stopped when `state.draining` is set)."""
    article = state.settings.delivery == "list"
    hub = Hub(state.settings.redis_url, state.keys, cluster=state.settings.redis_cluster,
              channel=state.keys.newsletters_channel if article else None,
              translate=to_event_frame if article else None,
              linger_s=state.settings.hub_linger_s)
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


class _Subscription:
    """`Hub.subscribe`'s block. A slotted class rather than an asynccontextmanager: it
    lives as long as the connection, and the generator's frame and contextlib's wrapper
    cost about 1 KiB more per connection (as `limits._Held`)."""

    __slots__ = ("hub", "user", "listener")

    def __init__(self, hub: Hub, user: str, listener: Listener) -> None:
        self.hub = hub
        self.user = user
        self.listener = listener

    async def __aenter__(self) -> bool:
        return await self.hub._join(self.user, self.listener)

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.hub._leave(self.user, self.listener)

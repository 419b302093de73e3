"""One client's live session, shared by the WebSocket and SSE transports.

Gap-free, duplicate-free delivery: the session is subscribed (through the hub) before it
reads the feed stream, buffers live frames while it replays the stream after the client's
last id in pages, then flushes the buffered frames newer than what it sent and goes live
(the merge itself is gateway/recovery.py). A client without a last id starts from the
feed's end as it was before the subscription (before its handshake completed, when the
transport calls `prepare`), so whatever is published once it is connected reaches it,
live or replayed; an empty feed's start is `FEED_START`. A pub/sub re-sync from the hub
runs the same catch-up from the cursor.

Slow clients: live frames go through a bounded queue; when it is full, or the transport
reports more bytes waiting for the client than it may hold (`ClientTooSlow`), the session
ends with close code 4008 and the client replays on reconnect. Replay pages are read only as
fast as the client takes them, so memory stays bounded whatever the client does.

Cost per connection: a session is a plain list, a counter and one future to wake its
task, which is the connection's own task (plus one watcher of the client, see
gateway/sessions.py). Gateways run on asyncio (uvicorn), so the per-frame path uses
asyncio futures directly: anyio's memory streams look up the current task on every
blocking receive, which cost a fifth of the gateway's CPU in the fan-out profile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, get_args

import msgspec

from livefeed.core import metrics
from livefeed.core.eventlog import FEED_START, EventLog, FeedEntry, parse_stream_id
from livefeed.gateway.recovery import Recovery, StreamId
from livefeed.schemas import frames
from livefeed.schemas.frames import EVENT_FRAME_HEAD, CloseCode, Delivery, FrameType, event_frame

logger = logging.getLogger(__name__)

# A replay reads pages that double from PAGE to PAGE_MAX entries: its first frames go out
# after a small read, and a long one makes few round trips (10,000 missed events: 12 reads,
# not 41; each read was ~0.1 ms of the gateway's CPU, mostly the syscall that wakes Redis).
PAGE = 250
PAGE_MAX = 1000
# Frames ready at once go to the transport together, up to this many or this many bytes:
# a replay page is a few socket writes, not one per message (the transport still splits
# them into messages of LIVEFEED_COALESCE frames).
WRITE_FRAMES = 256
WRITE_BYTES = 64 << 10

# Label children looked up once: `labels()` per frame was a measurable share of a send.
_SENT = {kind: metrics.FRAMES_SENT.labels(kind) for kind in get_args(FrameType)}
_SENT_EVENTS = _SENT["event"]
# The live frames whose delivery latency was observed, by identity (the last 64): a frame
# is observed once per gateway, at its first send (the tabs of a user get one bytes
# object: observing it per session cost ~1.5 µs a send, and said the same thing a
# thousand times). Entries hold their key object, so an id is never reused while here.
_observed: dict[int, bytes] = {}
_OBSERVED_SIZE = 64
# (stream id, feed id, frame) of a live frame; None: re-sync from the feed stream.
_Item = tuple[StreamId | None, str | None, bytes] | None


# (frame type, feed id, frame bytes) of one frame to write
Out = tuple[FrameType, str | None, bytes]


class ClientTooSlow(Exception):
    """Raised by a transport after a write that left more bytes waiting for its client than
    it may hold: the session ends with 4008, as when its queue is full."""


class Transport(Protocol):
    """Writes frames to the client; awaits while the client is not reading. May raise
    ClientTooSlow."""

    async def send(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None: ...

    async def send_many(self, frames: list[Out]) -> None:
        """Several frames at once, in order, in one write to the socket (WebSocket: messages
        of up to LIVEFEED_COALESCE frames each; SSE: an event each)."""
        ...

    def send_now(self, frame: bytes) -> bool:
        """Write one live event frame at once if that needs no waiting; False (nothing
        written) otherwise. May raise ClientTooSlow (the frame was written)."""
        ...

    def send_now_many(self, frames: list[bytes]) -> bool:
        """As `send_now`, several live event frames in order, in one write (WebSocket:
        messages of up to LIVEFEED_COALESCE frames). `frames` is never changed."""
        ...


class Subscriber(Protocol):
    """What a session needs of the hub: its user's live frames while inside the block."""

    def subscribe(self, user: str, listener: Session) -> AbstractAsyncContextManager[bool]: ...


class _Stopped(Exception):
    """`stop` was called: end the session (raised where its cancel may have been lost)."""


def frame_id(frame: bytes) -> str | None:
    """The feed id of a published `event` frame, without decoding its payload."""
    if frame.startswith(EVENT_FRAME_HEAD):
        end = frame.find(b'"', len(EVENT_FRAME_HEAD))
        if end > 0:
            return frame[len(EVENT_FRAME_HEAD) : end].decode()
    try:
        decoded = frames.decode_frame(frame)
    except msgspec.DecodeError:
        return None
    return decoded.id if isinstance(decoded, frames.EventFrame) else None


# The last live frame's (feed id, stream id): the hub hands one bytes object to every
# session of its user in a row, so a thousand tabs read the id once (reading it per
# session was a fifth of the gateway's CPU with 3,000 tabs of one user).
_last_live: tuple[bytes, str | None, StreamId | None] = (b"", None, None)


# The frame `_observe` saw last: the tabs of a user send the same one in a row.
_last_observed = b""
# The same for a burst (`on_live_many`): the list every tab of the user gets, and its ids.
_last_burst: tuple[list[bytes] | None, list[tuple[str | None, StreamId | None]]] = (None, [])
_last_observed_burst: list[bytes] | None = None


def _observe(parsed: StreamId, frame: bytes) -> None:
    """The delivery latency of a live frame, at its first send in this gateway."""
    global _last_observed
    _last_observed = frame
    if _observed.get(id(frame)) is not frame:
        if len(_observed) >= _OBSERVED_SIZE:
            del _observed[next(iter(_observed))]
        _observed[id(frame)] = frame
        metrics.DELIVERY_SECONDS.observe(max(0.0, time.time() - parsed[0] / 1000))


def _burst_ids(frames: list[bytes]) -> list[tuple[str | None, StreamId | None]]:
    global _last_burst
    last = _last_burst
    if last[0] is frames:
        return last[1]
    ids = [_live_id(frame) for frame in frames]
    _last_burst = (frames, ids)
    return ids


def _live_id(frame: bytes) -> tuple[str | None, StreamId | None]:
    global _last_live
    last = _last_live
    if last[0] is frame:
        return last[1], last[2]
    fid = frame_id(frame)
    parsed = parse_stream_id(fid) if fid is not None else None
    _last_live = (frame, fid, parsed)
    return fid, parsed


class Session:
    """Delivery to one connected client of `user` until stopped, cancelled or too slow."""

    __slots__ = ("user", "log", "hub", "transport", "last_id", "mode", "page", "page_max",
                 "queue_size", "coalesce", "close_code", "_out_events", "_pending", "_queued",
                 "_waiter", "_stopped", "_task", "_cancel_sent", "_prepared", "_recovery",
                 "_out", "_out_bytes", "_admitted")

    def __init__(self, *, user: str, log: EventLog, hub: Subscriber, transport: Transport,
                 last_id: str | None, mode: Delivery = "streams", queue_size: int = 1000,
                 page: int = PAGE, page_max: int = PAGE_MAX, coalesce: int = 16,
                 admitted: Callable[[], Awaitable[None]] | None = None) -> None:
        """`admitted`: awaited before anything is sent (the connection limits; it raises
        to refuse the session), after subscribing and the replay's first read, which
        run meanwhile."""
        self.user = user
        self.log = log
        self.hub = hub
        self.transport = transport
        self.last_id = last_id or None
        self.mode = mode
        self.page = page
        self.page_max = max(page, page_max)
        self.queue_size = queue_size
        # Frames ready to go are written together (the transport makes messages of up to
        # `coalesce` frames; 1: one at a time).
        self.coalesce = max(1, coalesce)
        self._out: list[Out] = []
        self._out_bytes = 0
        self.close_code: int | None = None
        self._out_events = 0  # event frames in `_out` (counted in the metric at a flush)
        # The send queue: items not yet taken by the session's task, and how many items
        # (these plus the rest of the batch being written) wait for the client.
        self._pending: list[_Item] = []
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._stopped = False
        self._task: asyncio.Task[Any] | None = None
        self._cancel_sent = False  # a cancel sent by stop() not yet withdrawn
        self._prepared = False
        self._recovery = Recovery(queue_size, syncing=mode == "streams")
        self._admitted = admitted

    # -- called by the hub (must not block) -----------------------------------------------

    def on_live(self, frame: bytes) -> None:
        fid, parsed = _live_id(frame)
        if self.mode != "streams":  # pubsub, list: no feed, the frame goes as it is
            self._enqueue((parsed, fid, frame))
            return
        if fid is None or parsed is None:
            logger.warning("dropping a live message of %s that is no event frame", self.user)
            return
        if self._recovery.live(parsed, fid, frame):
            self._enqueue((parsed, fid, frame))

    def on_live_many(self, frames: list[bytes]) -> None:
        """A burst: the frames that pass (as `on_live` lets them) go out in one write when
        the session waits with nothing queued, else are queued one by one."""
        items: list[tuple[StreamId | None, str | None, bytes]] = []
        streams = self.mode == "streams"
        for frame, (fid, parsed) in zip(frames, _burst_ids(frames), strict=True):
            if not streams:
                items.append((parsed, fid, frame))
            elif fid is None or parsed is None:
                logger.warning("dropping a live message of %s that is no event frame",
                               self.user)
            elif self._recovery.live(parsed, fid, frame):
                items.append((parsed, fid, frame))
        if not items or self._stopped:
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._send_now_many(
                items, frames if len(items) == len(frames) else [f for _, _, f in items]):
            return
        for item in items:
            self._queue(item)

    def on_resync(self) -> None:
        if self.mode != "streams":
            return
        self._recovery.begin()
        self._enqueue(None)

    def _enqueue(self, item: _Item) -> None:
        if self._stopped:
            return
        waiter = self._waiter
        if item is not None and waiter is not None and not waiter.done() \
                and self._send_now(item):
            return
        self._queue(item)

    def _queue(self, item: _Item) -> None:
        if self._stopped:
            return
        if self._queued >= self.queue_size:
            self._too_slow(f"{self.queue_size} frames queued")
            return
        self._pending.append(item)
        self._queued += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _send_now(self, item: tuple[StreamId | None, str | None, bytes]) -> bool:
        """A live frame for a session whose task waits with nothing queued (so nothing is
        ahead of it): written by the hub's reader at once when the transport takes it
        without waiting, with no wake-up of the task (a task switch per frame was most of
        the cost of a frame to a user's only tab). False: queue it as usual."""
        parsed, _, frame = item
        wrote = self._try(self.transport.send_now, frame)
        if not wrote:
            return wrote is None
        _SENT_EVENTS.value += 1
        if parsed is not None and frame is not _last_observed:
            _observe(parsed, frame)
        return True

    def _send_now_many(self, items: list[tuple[StreamId | None, str | None, bytes]],
                       frames: list[bytes]) -> bool:
        """`_send_now` for a burst: its frames in one write."""
        global _last_observed_burst
        wrote = self._try(self.transport.send_now_many, frames)
        if not wrote:
            return wrote is None
        _SENT_EVENTS.value += len(items)
        if frames is not _last_observed_burst:
            _last_observed_burst = frames
            for parsed, _, frame in items:
                if parsed is not None:
                    _observe(parsed, frame)
        return True

    def _try(self, send: Callable[[Any], bool], what: Any) -> bool | None:
        """A transport's `send_now` or `send_now_many`: True written, False not (queue
        it), None written but the client is too slow (the session ends with 4008)."""
        try:
            return send(what)
        except ClientTooSlow as slow:
            self._too_slow(str(slow))
            return None
        except (OSError, RuntimeError):
            return False  # the session's task meets it again on the usual path

    def _too_slow(self, why: str) -> None:
        logger.info("client of %s too slow (%s): closing", self.user, why)
        metrics.SLOW_CLOSES.inc()
        self.stop(CloseCode.TOO_SLOW)

    def stop(self, code: int | None = None) -> None:
        """End the session from outside (drain, slow or gone client): `run` returns the
        first `code` given. Safe before, during and after `run`."""
        if self._stopped:
            return
        self._stopped = True
        self.close_code = code
        self._pending.clear()
        # Cancelled rather than woken: the task may be blocked writing to the client or
        # reading the feed stream. (A task cancel, not an anyio CancelScope: a scope and
        # its task state cost ~0.7 KiB per connection; `run` consumes exactly this one.)
        # The cancel can be lost: redis-py wraps each command's write in asyncio.wait_for,
        # which on Python 3.11 returns the result instead of raising when the cancel lands
        # as the write completes (CPython gh-86296, fixed in 3.12). So the task also checks
        # `_stopped` after each Redis read and before it waits (`_check_stopped`).
        task = self._task
        if task is not None and task is not asyncio.current_task():
            self._cancel_sent = True
            task.cancel()

    def _check_stopped(self) -> None:
        if self._stopped:
            raise _Stopped

    # -- the session's own task -----------------------------------------------------------

    async def prepare(self) -> None:
        """Read where a client without a last id starts: the feed's end now. Transports
        call it before completing the handshake, so every event published once the client
        is connected is delivered; `run` calls it if they did not."""
        if self._prepared:
            return
        self._prepared = True
        if self.mode == "streams" and self.last_id is None:
            self._recovery.move_to(await self.log.last_feed_id(self.user) or FEED_START)

    async def run(self) -> int | None:
        """Deliver until stopped; returns the code given to `stop` (TOO_SLOW if the client
        could not keep up). A cancellation from outside propagates as usual."""
        task = self._task = asyncio.current_task()
        assert task is not None
        try:
            if not self._stopped:
                # Before subscribing: what is published from here on arrives live or in the
                # replay from this point.
                await self.prepare()
                self._check_stopped()
                async with self.hub.subscribe(self.user, self):
                    try:
                        await self._start()
                        await self._deliver()
                    finally:
                        # No cancel of ours may land in the unsubscribe.
                        self._stopped, self._task = True, None
        except _Stopped:
            pass
        except asyncio.CancelledError:
            # Ours (from `stop`) ends the session; any other cancellation goes on.
            if not self._consume_cancel(task):
                raise
        finally:
            self._stopped = True
            self._task = None
            self._pending.clear()
            self._out.clear()
            self._consume_cancel(task)
        if task.cancelling():
            # A cancel from outside, lost together with ours (see `stop`): it goes on.
            raise asyncio.CancelledError
        return self.close_code

    def _consume_cancel(self, task: asyncio.Task[Any]) -> bool:
        """Withdraw the cancel `stop` sent; True if no other cancellation is pending."""
        if not self._cancel_sent:
            return False
        self._cancel_sent = False
        return task.uncancel() == 0

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            if not self._pending:
                await self._flush()
                if self._pending or self._stopped:
                    continue
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            batch, self._pending = self._pending, []
            for item in batch:
                if self._stopped:
                    return
                self._queued -= 1
                if item is None:
                    await self._sync(initial=False)
                else:
                    await self._write_live(*item)

    async def _start(self) -> None:
        hello = frames.encode_frame(frames.Hello(user=self.user, mode=self.mode))
        if self.mode != "streams":
            await self._write("hello", None, hello)
            return
        if self.last_id is not None:
            await self._write("hello", None, hello)
            await self._sync(initial=True)
            return
        # No last id: from the start point `prepare` read, which the hello carries (a
        # re-sync after a pub/sub loss replays from the cursor; SSE clients get it as
        # their Last-Event-ID).
        start = self._recovery.cursor_id
        hello = frames.encode_frame(frames.Hello(user=self.user, mode=self.mode, last_id=start))
        await self._write("hello", start, hello)
        await self._sync(initial=False)

    async def _sync(self, *, initial: bool) -> None:
        """Replay the feed after the cursor (or the client's last id), then go live."""
        recovery = self._recovery
        recovery.begin()
        replayed = 0
        reset = False
        if initial:
            assert self.last_id is not None
            if parse_stream_id(self.last_id) is None:
                reset = True
                await self._reset("unknown_id")
            else:
                recovery.move_to(self.last_id)
        # A new connection's first read runs while its admission is decided (no flush).
        deciding = self._admitted is not None
        size = self.page
        while True:
            if deciding:
                deciding = False
            else:
                await self._flush()  # the page so far goes out while the next one is read
            after = recovery.cursor_id
            if after is None:
                entries, problem = await self.log.read_feed(self.user, FEED_START,
                                                            size), None
            else:
                entries, problem = await self.log.resume(self.user, after, size)
            self._check_stopped()
            if problem is not None:
                reset = True
                await self._reset(problem)
                continue
            replayed += await self._write_events(recovery.replayed(entries))
            if len(entries) == size:
                size = min(size * 2, self.page_max)
                continue
            if initial and not reset:
                initial = False
                metrics.REPLAYS.inc()
                recovered = frames.Recovered(count=replayed, last_id=recovery.cursor_id)
                await self._write("recovered", recovery.cursor_id,
                                  frames.encode_frame(recovered))
            # Flush what was published meanwhile; each write may let more arrive.
            while held := recovery.flush():
                for parsed, fid, frame in held:
                    await self._write_live(parsed, fid, frame)
            # No await between the last empty flush and this switch: nothing slips by.
            if recovery.finish():
                break
        if replayed:
            metrics.REPLAYED_EVENTS.inc(replayed)

    async def _reset(self, problem: str) -> None:
        metrics.RESETS.labels(problem).inc()
        logger.info("reset for %s: %s", self.user, problem)
        await self._flush()
        last = await self.log.last_feed_id(self.user)
        self._check_stopped()
        # An empty feed: read it from its start without a check; the client resumes from
        # FEED_START (whatever arrives from now on is after it).
        self._recovery.move_to(last)
        frame = frames.encode_frame(frames.Reset(reason=problem,  # type: ignore[arg-type]
                                                 last_id=last or FEED_START))
        await self._write("reset", last or FEED_START, frame)

    async def _write_live(self, parsed: StreamId | None, fid: str | None,
                          frame: bytes) -> None:
        if parsed is not None:
            _observe(parsed, frame)
        await self._write("event", fid, frame)

    async def _write(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None:
        """Queue a frame for the client; WRITE_FRAMES frames or WRITE_BYTES go out at once,
        the rest with the next `_flush` (before the task waits or reads Redis: nothing is
        held back)."""
        self._out.append((kind, feed_id, frame))
        self._out_bytes += len(frame)
        if kind == "event":
            self._out_events += 1
        else:
            _SENT[kind].inc()
        if len(self._out) >= WRITE_FRAMES or self._out_bytes >= WRITE_BYTES:
            await self._flush()

    async def _write_events(self, entries: list[FeedEntry]) -> int:
        """Queue the event frame of each feed entry, as `_write` does one frame (one loop
        here rather than a coroutine per event: that was a sixth of a replay's CPU)."""
        out = self._out
        for fid, data in entries:
            frame = event_frame(fid, data)
            out.append(("event", fid, frame))
            self._out_events += 1
            self._out_bytes += len(frame)
            if len(out) >= WRITE_FRAMES or self._out_bytes >= WRITE_BYTES:
                await self._flush()
                out = self._out
        return len(entries)

    async def _flush(self) -> None:
        if self._admitted is not None:  # nothing goes out before the connection is admitted
            admitted, self._admitted = self._admitted, None
            await admitted()
        out, self._out = self._out, []
        self._out_bytes = 0
        if self._out_events:
            _SENT_EVENTS.inc(self._out_events)
            self._out_events = 0
        try:
            if len(out) == 1:
                await self.transport.send(*out[0])
            elif out:
                await self.transport.send_many(out)
        except ClientTooSlow as slow:
            self._too_slow(str(slow))
            raise _Stopped from None

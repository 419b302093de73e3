"""One client's live session, shared by the WebSocket and SSE transports.

Gap-free, duplicate-free delivery: the session is subscribed (through the hub) before it
reads the feed stream, buffers live frames while it replays the stream after the client's
last id in pages, then flushes the buffered frames newer than what it sent and goes live.
Every event frame passes one cursor check (its stream id must be greater than the last one
sent), so a frame that arrives both ways is sent once. A pub/sub re-sync from the hub runs
the same catch-up from the cursor.

Slow clients: live frames go through a bounded queue; when it is full the session ends
with close code 4008 and the client replays on reconnect. Replay pages are read only as
fast as the client takes them, so memory stays bounded whatever the client does.

Cost per connection: a session is a plain list, a counter and one future to wake its
task, which is the connection's own task (plus one watcher of the client, see `run_with`);
the drain stops every session through one `Sessions` registry, not a task each. Gateways
run on asyncio (uvicorn), so the per-frame path uses asyncio futures directly: anyio's
memory streams look up the current task on every blocking receive, which cost a fifth of
the gateway's CPU in the fan-out profile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, get_args

import anyio
import msgspec

from livefeed.core import metrics
from livefeed.core.eventlog import EventLog, parse_stream_id
from livefeed.schemas import frames
from livefeed.schemas.frames import EVENT_FRAME_HEAD, CloseCode, Delivery, FrameType

logger = logging.getLogger(__name__)

PAGE = 250
RESTOP_S = 1.0
StreamId = tuple[int, int]

# Label children looked up once: `labels()` per frame was a measurable share of a send.
_SENT = {kind: metrics.FRAMES_SENT.labels(kind) for kind in get_args(FrameType)}
# (stream id, feed id, frame) of a live frame; None: re-sync from the feed stream.
_Item = tuple[StreamId | None, str | None, bytes] | None


class Transport(Protocol):
    """Writes one frame to the client; awaits while the client is not reading."""

    async def send(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None: ...


class HubLike(Protocol):
    async def join(self, user: str, listener: Session) -> bool: ...

    async def leave(self, user: str, listener: Session) -> None: ...


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


class Session:
    """Delivery to one connected client of `user` until stopped, cancelled or too slow."""

    __slots__ = ("user", "log", "hub", "transport", "last_id", "mode", "page", "queue_size",
                 "close_code", "sent_events", "_pending", "_queued", "_waiter", "_stopped",
                 "_task", "_cancel_sent", "_cursor", "_cursor_id", "_syncing", "_buffer",
                 "_overflow")

    def __init__(self, *, user: str, log: EventLog, hub: HubLike, transport: Transport,
                 last_id: str | None, mode: Delivery = "streams", queue_size: int = 1000,
                 page: int = PAGE) -> None:
        self.user = user
        self.log = log
        self.hub = hub
        self.transport = transport
        self.last_id = last_id or None
        self.mode = mode
        self.page = page
        self.queue_size = queue_size
        self.close_code: int | None = None
        self.sent_events = 0
        # The send queue: items not yet taken by the session's task, and how many items
        # (these plus the rest of the batch being written) wait for the client.
        self._pending: list[_Item] = []
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._stopped = False
        self._task: asyncio.Task[Any] | None = None
        self._cancel_sent = 0  # cancels sent by stop()/restop() not yet withdrawn
        self._cursor: StreamId | None = None
        self._cursor_id: str | None = None
        # Live frames that arrive while the feed stream is being replayed.
        self._syncing = mode == "streams"
        self._buffer: list[tuple[StreamId, str, bytes]] = []
        self._overflow = False

    # -- called by the hub (must not block) -----------------------------------------------

    def on_live(self, frame: bytes) -> None:
        if self.mode == "pubsub":
            fid = frame_id(frame)
            self._enqueue((parse_stream_id(fid) if fid else None, fid, frame))
            return
        fid = frame_id(frame)
        parsed = parse_stream_id(fid) if fid is not None else None
        if fid is None or parsed is None:
            logger.warning("dropping a live message of %s that is no event frame", self.user)
            return
        if self._syncing:
            if len(self._buffer) >= self.queue_size:
                # Everything published is in the feed stream too: read it from there.
                self._buffer.clear()
                self._overflow = True
            else:
                self._buffer.append((parsed, fid, frame))
            return
        if self._cursor is not None and parsed <= self._cursor:
            return
        self._set_cursor(parsed, fid)
        self._enqueue((parsed, fid, frame))

    def on_resync(self) -> None:
        if self.mode != "streams":
            return
        self._syncing = True
        self._enqueue(None)

    def _enqueue(self, item: _Item) -> None:
        if self._stopped:
            return
        if self._queued >= self.queue_size:
            self._too_slow()
            return
        self._pending.append(item)
        self._queued += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _too_slow(self) -> None:
        logger.info("client of %s too slow (%d frames queued): closing", self.user,
                    self.queue_size)
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
        self._cancel()

    def restop(self) -> bool:
        """Cancel again a session that `stop` did not end (a cancel can be swallowed by code
        it lands in); True if it was still running."""
        if not self._stopped or self._task is None:
            return False
        logger.warning("session of %s still running after stop(); cancelling again", self.user)
        self._cancel()
        return True

    def _cancel(self) -> None:
        task = self._task
        if task is not None and task is not asyncio.current_task():
            self._cancel_sent += 1
            task.cancel()

    # -- the session's own task -----------------------------------------------------------

    async def run(self) -> int | None:
        """Deliver until stopped; returns the code given to `stop` (TOO_SLOW if the client
        could not keep up). A cancellation from outside propagates as usual."""
        task = self._task = asyncio.current_task()
        assert task is not None
        try:
            if not self._stopped:
                await self.hub.join(self.user, self)
                await self._start()
                await self._deliver()
        except asyncio.CancelledError:
            # Ours (from `stop`) ends the session; any other cancellation goes on.
            if not self._consume_cancel(task):
                raise
        finally:
            self._stopped = True
            self._task = None
            self._pending.clear()
            self._consume_cancel(task)
            with anyio.CancelScope(shield=True):
                await self.hub.leave(self.user, self)
        return self.close_code

    def _consume_cancel(self, task: asyncio.Task[Any]) -> bool:
        """Withdraw the cancels `stop` sent; True if no other cancellation is pending."""
        if not self._cancel_sent:
            return False
        left = task.cancelling()
        while self._cancel_sent:
            self._cancel_sent -= 1
            left = task.uncancel()
        return left == 0

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
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
        if self.mode == "pubsub":
            await self._write("hello", None, hello)
            return
        if self.last_id is not None:
            await self._write("hello", None, hello)
            await self._sync(initial=True)
            return
        # No last id: live from the current end of the feed (recorded, so a re-sync after a
        # pub/sub loss replays from here; SSE clients get it as their Last-Event-ID).
        last = await self.log.last_feed_id(self.user)
        self._move_cursor(last)
        hello = frames.encode_frame(frames.Hello(user=self.user, mode=self.mode, last_id=last))
        await self._write("hello", last, hello)
        await self._sync(initial=False)

    async def _sync(self, *, initial: bool) -> None:
        """Replay the feed after the cursor (or the client's last id), then go live."""
        self._syncing = True
        replayed = 0
        reset = False
        if initial:
            assert self.last_id is not None
            if parse_stream_id(self.last_id) is None:
                reset = True
                await self._reset("unknown_id")
            else:
                self._move_cursor(self.last_id)
        while True:
            if self._cursor_id is None:
                entries, problem = await self.log.read_feed(self.user, "0-0", self.page), None
            else:
                entries, problem = await self.log.resume(self.user, self._cursor_id, self.page)
            if problem is not None:
                reset = True
                await self._reset(problem)
                continue
            for entry in entries:
                self._move_cursor(entry.feed_id)
                await self._write("event", entry.feed_id,
                                  frames.event_frame(entry.feed_id, entry.data))
            replayed += len(entries)
            if len(entries) == self.page:
                continue
            if initial and not reset:
                initial = False
                metrics.REPLAYS.inc()
                recovered = frames.Recovered(count=replayed, last_id=self._cursor_id)
                await self._write("recovered", self._cursor_id, frames.encode_frame(recovered))
            # Flush what was published meanwhile; each write may let more arrive.
            while self._buffer and not self._overflow:
                buffered, self._buffer = self._buffer, []
                for parsed, fid, frame in buffered:
                    if self._cursor is None or parsed > self._cursor:
                        self._cursor, self._cursor_id = parsed, fid
                        await self._write_live(parsed, fid, frame)
            if self._overflow:
                self._overflow = False
                continue
            break
        if replayed:
            metrics.REPLAYED_EVENTS.inc(replayed)
        # No await between the last empty-buffer check and this switch: nothing slips by.
        self._syncing = False

    async def _reset(self, problem: str) -> None:
        metrics.RESETS.labels(problem).inc()
        logger.info("reset for %s: %s", self.user, problem)
        last = await self.log.last_feed_id(self.user)
        self._move_cursor(last)
        frame = frames.encode_frame(frames.Reset(reason=problem, last_id=last))  # type: ignore[arg-type]
        await self._write("reset", last, frame)

    def _move_cursor(self, fid: str | None) -> None:
        parsed = parse_stream_id(fid) if fid is not None else None
        if parsed is None:
            self._cursor = self._cursor_id = None
        else:
            self._cursor, self._cursor_id = parsed, fid

    def _set_cursor(self, parsed: StreamId, fid: str) -> None:
        self._cursor, self._cursor_id = parsed, fid

    async def _write_live(self, parsed: StreamId | None, fid: str | None,
                          frame: bytes) -> None:
        if parsed is not None:
            metrics.DELIVERY_SECONDS.observe(max(0.0, time.time() - parsed[0] / 1000))
        await self._write("event", fid, frame)

    async def _write(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None:
        await self.transport.send(kind, feed_id, frame)
        _SENT[kind].inc()
        if kind == "event":
            self.sent_events += 1


class Sessions:
    """The live sessions of one gateway process, so that the drain stops them all at once
    (one watcher per process instead of one task per connection)."""

    def __init__(self) -> None:
        self._live: set[Session] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._live)

    def add(self, session: Session) -> None:
        if self.draining:
            session.stop(CloseCode.DRAINING)
        else:
            self._live.add(session)

    def discard(self, session: Session) -> None:
        self._live.discard(session)

    def drain(self) -> None:
        """Stop every session with CloseCode.DRAINING, and every session added from now on."""
        self.draining = True
        live, self._live = self._live, set()
        for session in live:
            session.stop(CloseCode.DRAINING)

    async def drain_on(self, draining: anyio.Event) -> None:
        await draining.wait()
        self.drain()


async def run_with(session: Session, sessions: Sessions,
                   watch: Callable[[], Awaitable[object]]) -> int | None:
    """Run `session` in this task and `watch` (which returns when the client is gone) in
    one more; whichever ends first ends the other. Returns what `session.run` returns."""

    async def watcher() -> None:
        try:
            await watch()
        finally:
            session.stop()
        # Until `run` returns (this task is cancelled then): a lost cancel must not leave
        # a session of a departed client running, subscribed, forever.
        while True:
            await asyncio.sleep(RESTOP_S)
            session.restop()

    task = asyncio.create_task(watcher())
    task.add_done_callback(_log_failure)
    sessions.add(session)
    try:
        return await session.run()
    finally:
        sessions.discard(session)
        task.cancel()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("watcher of a live session failed", exc_info=exc)

"""Session logic against the real Redis and a real hub, with a recording transport."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from livefeed.core.eventlog import FEED_START, EventLog
from livefeed.core.keys import Keys
from livefeed.gateway import live
from livefeed.gateway.hub import Hub
from livefeed.gateway.live import ClientTooSlow, FrameType, Session, frame_id
from livefeed.schemas.frames import CloseCode, event_frame
from tests.gateway.livehelp import assert_exact, make_log, publish, tells_an_intact_head
from tests.helpers.frames import Recorder
from tests.helpers.waiting import eventually

# Marked here too: anyio's plugin otherwise drops the parameters of parametrized async tests.
pytestmark = pytest.mark.anyio


def session(log: EventLog, hub: Hub, rec: Recorder, last_id: str | None, **kw: Any) -> Session:
    return Session(user="alice", log=log, hub=hub, transport=rec, last_id=last_id, **kw)


def record_resumes(log: EventLog) -> list[tuple[str, int]]:
    """Wrap `log.resume`: the (last id, count) of each call, in order."""
    calls: list[tuple[str, int]] = []
    resume = log.resume

    async def recorded(user: str, last_id: str, count: int) -> Any:
        calls.append((last_id, count))
        return await resume(user, last_id, count)

    log.resume = recorded  # type: ignore[method-assign]
    return calls


def test_frame_id_reads_the_published_frame() -> None:
    assert frame_id(event_frame("17-3", b'{"a":1}')) == "17-3"
    assert frame_id(b'{"id":"5-1","type":"event","data":{}}') == "5-1"
    assert frame_id(b"not json") is None


@pytest.fixture
def ids_read(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The frames whose feed id the sessions read, in order."""
    read: list[bytes] = []

    def counting(frame: bytes) -> str | None:
        read.append(frame)
        return frame_id(frame)

    monkeypatch.setattr(live, "frame_id", counting)
    return read


def unstarted_tabs() -> list[Session]:
    """Two streams sessions of alice and a pubsub one, not started."""
    return [Session(user="alice", log=None, hub=None, transport=Recorder(),  # type: ignore[arg-type]
                    last_id=None, mode=mode) for mode in ("streams", "streams", "pubsub")]


def test_a_live_frame_for_many_sessions_has_its_id_read_once(ids_read: list[bytes]) -> None:
    tabs = unstarted_tabs()
    frame = event_frame("5-1", b"{}")
    for tab in tabs:
        tab.on_live(frame)
    same = event_frame("5-1", b"{}")  # equal bytes, another object: read again
    for tab in tabs:
        tab.on_live(same)
    assert ids_read == [frame, same] and ids_read[1] is same
    assert [tab._pending for tab in tabs[2:]] == [[((5, 1), "5-1", frame),
                                                   ((5, 1), "5-1", same)]]


def test_a_burst_for_many_sessions_has_its_ids_read_once(ids_read: list[bytes]) -> None:
    tabs = unstarted_tabs()
    burst = [event_frame(f"5-{i}", b"{}") for i in range(3)]
    for tab in tabs:
        tab.on_live_many(burst)
    assert ids_read == burst
    # Not waiting (not started): queued one by one, in order.
    assert tabs[2]._pending == [((5, i), f"5-{i}", burst[i]) for i in range(3)]


async def test_a_burst_to_a_waiting_session_is_one_write_of_what_passes_the_cursor(
        redis: Any, keys: Keys, hub: Hub) -> None:
    log = make_log(redis, keys)
    old = await publish(log, "alice", 2)
    rec = Recorder()
    s = session(log, hub, rec, None)
    ms = int(old[-1].split("-")[0]) + 10
    burst = [event_frame(f"{ms}-{i}", b"{}") for i in range(3)]
    later = event_frame(f"{ms + 1}-0", b"{}")
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        await rec.until(lambda r: r.types() == ["hello"])
        await eventually(lambda: s._waiter is not None, what="the session waiting")
        s.on_live_many(burst)  # as the hub's reader does: written at once, in one write
        assert rec.bursts == [3] and rec.events() == [f"{ms}-{i}" for i in range(3)]
        s.on_live_many([burst[2], later])  # the first was sent already: the cursor drops it
        assert rec.bursts == [3, 1] and rec.events()[-1] == f"{ms + 1}-0"
        tg.cancel_scope.cancel()
    assert rec.written_now == 4 and len(rec.events()) == 4


async def test_replays_missed_events_while_new_ones_arrive(redis: Any, keys: Keys,
                                                           hub: Hub) -> None:
    log = make_log(redis, keys)
    seen = await publish(log, "alice", 3)
    missed = await publish(log, "alice", 500, start=3)
    rec = Recorder()
    s = session(log, hub, rec, seen[-1], page=50)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        # Events keep coming while the replay runs: none may be lost or doubled.
        during = []
        for i in range(10):
            during += await publish(log, "alice", 5, start=1000 + 5 * i)
            await anyio.sleep(0.005)
        await rec.until(lambda r: len(r.events()) >= 550)
        after = await publish(log, "alice", 5, start=2000)
        await rec.until(lambda r: len(r.events()) >= 555)
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert_exact(rec.events(), missed + during + after)
    assert rec.types()[0] == "hello"
    assert rec.types().count("recovered") == 1
    at = rec.types().index("recovered")
    recovered = rec.frames[at][2]
    assert recovered["count"] == rec.types()[:at].count("event") >= 500
    assert recovered["last_id"] == rec.events()[recovered["count"] - 1]


@pytest.mark.parametrize("admission", ["admitted", "refused"])
async def test_the_first_replay_read_runs_while_admission_is_decided_and_nothing_goes_out(
        redis: Any, keys: Keys, hub: Hub, admission: str) -> None:
    log = make_log(redis, keys)
    seen = await publish(log, "alice", 3)
    missed = await publish(log, "alice", 30, start=3)
    resumes = record_resumes(log)
    decided = anyio.Event()

    async def admitted() -> None:
        await decided.wait()
        if admission == "refused":
            raise LookupError("refused")

    rec = Recorder()
    s = session(log, hub, rec, seen[-1], page=20, admitted=admitted)
    outcome: list[object] = []

    async def run() -> None:
        try:
            outcome.append(await s.run())
        except LookupError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await eventually(lambda: [i for i, _ in resumes] == [seen[-1]],
                         what="the first page read")
        await anyio.sleep(0.1)
        assert len(resumes) == 1 and rec.frames == []  # read, and nothing sent yet
        decided.set()
        if admission == "admitted":
            await rec.until(lambda r: "recovered" in r.types())
            tg.cancel_scope.cancel()
        else:
            await eventually(lambda: bool(outcome), what="the session's end")
    if admission == "refused":
        assert isinstance(outcome[0], LookupError) and rec.frames == []
    else:
        assert_exact(rec.events(), missed)
        assert rec.types()[0] == "hello" and len(resumes) == 2  # 30: a page of 20, then 10


async def test_without_last_id_starts_live_at_the_end(redis: Any, keys: Keys, hub: Hub) -> None:
    log = make_log(redis, keys)
    old = await publish(log, "alice", 5)
    rec = Recorder()
    s = session(log, hub, rec, None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        await rec.until(lambda r: r.types() == ["hello"])
        assert rec.frames[0][1] == old[-1]  # the SSE id: where a reconnect resumes from
        # ... and the WebSocket client's, in the frame itself
        assert rec.frames[0][2] == {"type": "hello", "user": "alice", "mode": "streams",
                                    "last_id": old[-1]}
        new = await publish(log, "alice", 7, start=5)
        await rec.until(lambda r: len(r.events()) >= 7)
        tg.cancel_scope.cancel()
    assert_exact(rec.events(), new)


async def test_an_empty_feed_gives_its_start_as_the_resume_point(redis: Any, keys: Keys,
                                                               hub: Hub) -> None:
    log = make_log(redis, keys)
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(session(log, hub, rec, None).run)
        await rec.until(lambda r: r.types() == ["hello"])
        assert rec.frames[0][1:] == (FEED_START, {"type": "hello", "user": "alice",
                                                  "mode": "streams", "last_id": FEED_START})
        seen = await publish(log, "alice", 2)
        await rec.until(lambda r: len(r.events()) >= 2)
        tg.cancel_scope.cancel()
    assert_exact(rec.events(), seen)

    # A client that left before its first event comes back with the start: it gets the
    # whole feed (when the server can tell that nothing was trimmed from its head).
    missed = await publish(log, "alice", 300, start=2)
    again = Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(session(log, hub, again, FEED_START, page=50).run)
        await again.until(lambda r: "recovered" in r.types() or "reset" in r.types())
        live = await publish(log, "alice", 3, start=302)
        await again.until(lambda r: r.events()[-1:] == live[-1:])
        tg.cancel_scope.cancel()
    if await tells_an_intact_head(redis):
        assert_exact(again.events(), seen + missed + live)
        assert again.frames[303][2] == {"type": "recovered", "count": 302,
                                        "last_id": missed[-1]}
    else:  # Redis 6.2: it cannot tell, so the client reloads the history instead
        assert again.frames[1][2] == {"type": "reset", "reason": "trimmed",
                                      "last_id": missed[-1]}
        assert_exact(again.events(), live)


async def test_the_start_of_a_feed_that_lost_its_head_resets(redis: Any, keys: Keys,
                                                            hub: Hub) -> None:
    log = make_log(redis, keys, maxlen=10)
    ids = await publish(log, "alice", 400)
    assert await redis.xlen(keys.feed("alice")) < 400
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(session(log, hub, rec, FEED_START).run)
        await rec.until(lambda r: "reset" in r.types())
        live = await publish(log, "alice", 3, start=400)
        await rec.until(lambda r: len(r.events()) >= 3)
        tg.cancel_scope.cancel()
    assert rec.types()[:2] == ["hello", "reset"]
    assert rec.frames[1][2] == {"type": "reset", "reason": "trimmed", "last_id": ids[-1]}
    assert_exact(rec.events(), live)


@pytest.mark.parametrize("case", ["trimmed", "unknown_id", "garbage", "stream_lost"])
async def test_unreplayable_history_resets_then_goes_live(redis: Any, keys: Keys, hub: Hub,
                                                          case: str) -> None:
    log = make_log(redis, keys, maxlen=10)
    if case == "stream_lost":
        last_id, reason = "1700000000000-0", "stream_lost"
    else:
        ids = await publish(log, "alice", 400)
        if case == "trimmed":
            last_id, reason = ids[0], "trimmed"
            assert await redis.xlen(keys.feed("alice")) < 400
        elif case == "unknown_id":
            last_id, reason = ids[-1].split("-")[0] + "-999999", "unknown_id"
        else:
            last_id, reason = "yesterday", "unknown_id"
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(session(log, hub, rec, last_id).run)
        await rec.until(lambda r: "reset" in r.types())
        live = await publish(log, "alice", 3, start=900)
        await rec.until(lambda r: len(r.events()) >= 3)
        tg.cancel_scope.cancel()
    assert rec.types()[:2] == ["hello", "reset"]
    # Where the client resumes from: the feed's end, or its start when there is none.
    end = FEED_START if case == "stream_lost" else ids[-1]
    assert rec.frames[1][1:] == (end, {"type": "reset", "reason": reason, "last_id": end})
    assert "recovered" not in rec.types()
    assert_exact(rec.events(), live)


async def close_code_after(s: Session, rec: Recorder,
                           act: Callable[[], Awaitable[None]]) -> int | None:
    """Run session `s` until its hello reached `rec`, do `act`, and return the close code
    the session ends with."""
    result: list[int | None] = []

    async def run() -> None:
        result.append(await s.run())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await rec.until(lambda r: r.types() == ["hello"])
        await act()
        await eventually(lambda: result, what="the session's end", timeout=20)
    return result[0]


async def test_slow_client_is_closed_with_4008(redis: Any, keys: Keys, hub: Hub) -> None:
    log = make_log(redis, keys)
    rec = Recorder()
    s = session(log, hub, rec, None, queue_size=5)

    async def stall_then_publish() -> None:
        rec.stalled = True
        await publish(log, "alice", 20)

    assert await close_code_after(s, rec, stall_then_publish) == CloseCode.TOO_SLOW
    assert hub.local_users() == 0


async def test_a_transport_holding_too_many_bytes_ends_the_session_with_4008(
        redis: Any, keys: Keys, hub: Hub) -> None:
    """A transport that reports its client too slow (the WebSocket transport's byte bound)
    ends the session as a full queue does, and nothing more is written."""
    log = make_log(redis, keys)

    class Full(Recorder):
        async def send(self, kind: Any, feed_id: str | None, frame: bytes) -> None:
            await super().send(kind, feed_id, frame)
            if kind == "event":
                raise ClientTooSlow("2 MiB buffered")

        def send_now(self, frame: bytes) -> bool:
            super().send_now(frame)
            raise ClientTooSlow("2 MiB buffered")

    rec = Full()
    s = session(log, hub, rec, None, queue_size=1000, coalesce=1)

    async def publish_some() -> None:
        await publish(log, "alice", 5)

    assert await close_code_after(s, rec, publish_some) == CloseCode.TOO_SLOW
    assert len(rec.events()) == 1
    assert hub.local_users() == 0


async def test_pubsub_mode_forwards_live_frames_without_replay(redis: Any, keys: Keys,
                                                               hub: Hub) -> None:
    log = make_log(redis, keys)
    old = await publish(log, "alice", 5)
    rec = Recorder()
    s = session(log, hub, rec, old[0], mode="pubsub")
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        await rec.until(lambda r: r.types() == ["hello"])
        new = await publish(log, "alice", 3, start=5)
        await rec.until(lambda r: len(r.events()) >= 3)
        tg.cancel_scope.cancel()
    assert rec.frames[0][2] == {"type": "hello", "user": "alice", "mode": "pubsub"}
    assert rec.events() == new


@pytest.mark.parametrize(("page", "writes"), [(40, [40] * 7 + [21]),
                                             (600, [live.WRITE_FRAMES, 45])])
async def test_a_replay_page_goes_to_the_transport_in_few_writes(
        redis: Any, keys: Keys, hub: Hub, monkeypatch: pytest.MonkeyPatch, page: int,
        writes: list[int]) -> None:
    monkeypatch.setattr(live, "WRITE_BYTES", 1 << 30)
    log = make_log(redis, keys)
    seen = await publish(log, "alice", 1)
    missed = await publish(log, "alice", 300, start=1)
    rec = Recorder()
    s = session(log, hub, rec, seen[-1], page=page, page_max=page)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        await rec.until(lambda r: "recovered" in r.types())
        live_ids = await publish(log, "alice", 3, start=500)
        await rec.until(lambda r: len(r.events()) >= 303)
        tg.cancel_scope.cancel()
    assert_exact(rec.events(), missed + live_ids)
    assert rec.types()[0] == "hello" and rec.types()[301] == "recovered"
    # Pages of 40: each page is one write, flushed before the next page is read; the
    # last one carries `recovered`. One page of 300: writes of at most WRITE_FRAMES.
    assert rec.batch_sizes[: len(writes)] == writes


async def test_replay_pages_double_up_to_the_largest_page(
        redis: Any, keys: Keys, hub: Hub) -> None:
    log = make_log(redis, keys)
    seen = await publish(log, "alice", 1)
    missed = await publish(log, "alice", 700, start=1)
    resumes = record_resumes(log)
    rec = Recorder()
    s = session(log, hub, rec, seen[-1], page=40, page_max=300)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        await rec.until(lambda r: "recovered" in r.types())
        tg.cancel_scope.cancel()
    assert_exact(rec.events(), missed)
    # 40 + 80 + 160 + 300 full pages, then 120 of 300: the last page read tells the end.
    assert [n for _, n in resumes] == [40, 80, 160, 300, 300]
    assert rec.types()[701] == "recovered"


async def test_a_write_holds_at_most_write_bytes_and_one_frame(
        redis: Any, keys: Keys, hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "WRITE_BYTES", 2000)
    log = make_log(redis, keys)
    seen = await publish(log, "alice", 1)
    missed = await publish(log, "alice", 100, start=1)
    sizes: list[int] = []

    class Sized(Recorder):
        async def send_many(self, frames: list[tuple[FrameType, str | None, bytes]]) -> None:
            sizes.append(sum(len(f) for _, _, f in frames) - len(frames[-1][2]))
            await super().send_many(frames)

    rec = Sized()
    s = session(log, hub, rec, seen[-1], page=500)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        await rec.until(lambda r: "recovered" in r.types())
        tg.cancel_scope.cancel()
    assert_exact(rec.events(), missed)
    assert len(sizes) > 3 and max(sizes) < 2000  # what came before the last frame


async def test_a_live_frame_is_observed_once_per_gateway_and_counted_per_session(
        redis: Any, keys: Keys, hub: Hub) -> None:
    from livefeed.core import metrics

    def delivered() -> float:
        buckets = metrics.DELIVERY_SECONDS._buckets  # type: ignore[attr-defined]
        return float(sum(b.get() for b in buckets))

    def sent() -> float:
        return live._SENT_EVENTS.value

    log = make_log(redis, keys)
    tabs = [Recorder() for _ in range(3)]
    sessions = [session(log, hub, rec, None) for rec in tabs]
    async with anyio.create_task_group() as tg:
        for s in sessions:
            tg.start_soon(s.run)
        for rec in tabs:
            await rec.until(lambda r: r.types() == ["hello"])
        observed, counted = delivered(), sent()
        ids = await publish(log, "alice", 4)
        for rec in tabs:
            await rec.until(lambda r: len(r.events()) == 4)
        tg.cancel_scope.cancel()
    for rec in tabs:
        assert_exact(rec.events(), ids)
    assert delivered() - observed == 4  # one tab's sends, not three
    assert sent() - counted == 12  # every frame sent is counted


async def test_live_frames_to_a_waiting_session_are_written_by_the_hubs_reader(
        redis: Any, keys: Keys, hub: Hub) -> None:
    """A session waiting with nothing queued has its live frames written at once (no wake
    of its task); while the transport cannot take them they queue, and they still go out
    in order, each once."""
    log = make_log(redis, keys)

    class Paused(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.resumed: anyio.Event | None = None

        async def send(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None:
            if self.resumed is not None:
                await self.resumed.wait()
            await super().send(kind, feed_id, frame)

        def send_now(self, frame: bytes) -> bool:
            return self.resumed is None and super().send_now(frame)

    rec = Paused()
    s = session(log, hub, rec, None, coalesce=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        await rec.until(lambda r: r.types() == ["hello"])
        first: list[str] = []
        for i in range(5):  # one at a time: each finds the session waiting
            first += await publish(log, "alice", 1, start=i)
            await rec.until(lambda r, n=i + 1: len(r.events()) == n)
        assert rec.written_now == 5
        rec.resumed = resumed = anyio.Event()  # as a paused socket: queued, the task waits
        more = await publish(log, "alice", 5, start=5)
        await anyio.sleep(0.2)
        rec.resumed = None
        resumed.set()
        await rec.until(lambda r: len(r.events()) == 10)
        last = await publish(log, "alice", 1, start=10)
        await rec.until(lambda r: len(r.events()) == 11)
        tg.cancel_scope.cancel()
    assert_exact(rec.events(), first + more + last)

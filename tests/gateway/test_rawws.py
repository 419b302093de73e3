"""Raw WebSocket writes: the `livefeed.ws.write` extension (ops/protocols.py) under a real
uvicorn, the transport that uses it (gateway/ws.py), and the gateway writing through it:
exact frames, each frame encoded once for all the tabs it goes to, coalesced messages,
and 4008 for a client that stops reading."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
import websockets
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed

from livefeed.core.keys import Keys
from livefeed.core.settings import Resolved
from livefeed.gateway import ws as ws_mod
from livefeed.gateway.app import create_app
from livefeed.gateway.live import ClientTooSlow
from livefeed.gateway.ws import RAW_WRITE, WebSocketTransport
from livefeed.schemas.frames import event_frame, join_frames, ws_text_frame
from tests.gateway.livehelp import (
    SECRET,
    WsClient,
    assert_exact,
    make_log,
    publish,
    serving,
    ws_url,
)
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.anyio


def raw_app(run: Callable[[Any, Any, Any], Any]) -> Any:
    """An ASGI app whose WebSocket connections are handled by `run(raw, receive, send)`."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert scope["type"] == "websocket"
        await run(scope["extensions"][RAW_WRITE], receive, send)

    return app


# -- the extension under uvicorn ----------------------------------------------------------

@pytest.mark.parametrize("who", ["app", "client"])
async def test_raw_frames_arrive_exactly_and_writes_after_a_close_are_refused(who: str,
                                                                             ) -> None:
    payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536, '"é"'.encode()]
    reported: list[int | None] = []
    done = anyio.Event()

    async def run(raw: Any, receive: Any, send: Any) -> None:
        reported.append(raw.write(ws_text_frame(b"too early")))  # before the handshake
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        for payload in payloads:
            reported.append(raw.write(ws_text_frame(payload)))
        if who == "app":
            await send({"type": "websocket.close", "code": 4321, "reason": "bye"})
        else:
            assert (await receive())["type"] == "websocket.disconnect"
        reported.append(raw.write(ws_text_frame(b"too late")))
        done.set()

    async with serving(raw_app(run)) as url:
        async with websockets.connect(url.replace("http", "ws") + "/",
                                      max_size=None) as client:
            got = [await client.recv() for _ in payloads]
            if who == "app":
                with pytest.raises(ConnectionClosed) as closed:
                    await client.recv()
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4321, "bye")
            else:
                await client.close()
            with anyio.fail_after(10):
                await done.wait()
    assert got == [p.decode() for p in payloads]  # text messages, in order, whole
    assert reported[0] is None and reported[-1] is None
    assert all(isinstance(n, int) and n >= 0 for n in reported[1:-1])


async def test_a_paused_transport_is_reported_and_drain_waits_for_the_client() -> None:
    frame = ws_text_frame(b"x" * 65536)
    state: dict[str, Any] = {}
    resumed = anyio.Event()

    async def run(raw: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        sizes = []
        while not raw.paused and len(sizes) < 2000:  # the client does not read
            sizes.append(raw.write(frame))
        state["sent"], state["paused"], state["last_size"] = len(sizes), raw.paused, sizes[-1]
        state["reading"] = anyio.Event()
        await state["reading"].wait()
        await raw.drain()
        state["after_drain"] = raw.paused
        raw.write(ws_text_frame(b"end"))
        resumed.set()
        await receive()

    async with serving(raw_app(run)) as url:
        async with websockets.connect(url.replace("http", "ws") + "/", max_size=None,
                                      max_queue=1) as client:
            await eventually(lambda: "reading" in state, what="a paused transport")
            assert state["paused"] and state["last_size"] > 0
            state["reading"].set()
            got = 0
            while (message := await client.recv()) != "end":
                assert len(message) == 65536
                got += 1
            assert resumed.is_set() and state["after_drain"] is False
    assert got == state["sent"]


# -- the transport ------------------------------------------------------------------------

class FakeRaw:
    """A RawWriter that records what was written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.open = True
        self.paused = False
        self.drains = 0

    def write(self, frame: bytes) -> int | None:
        if not self.open:
            return None
        self.written.append(frame)
        return self.buffered

    async def drain(self) -> None:
        self.drains += 1
        self.paused = False


def transport(raw: FakeRaw | None, max_buffered: int = 1000,
              coalesce: int = 16) -> WebSocketTransport:
    async def nothing(*_: Any) -> Any:
        raise AssertionError("the Starlette path was taken")

    extensions = {RAW_WRITE: raw} if raw is not None else {}
    scope = {"type": "websocket", "path": "/v1/ws", "headers": [], "extensions": extensions}
    return WebSocketTransport(WebSocket(scope, nothing, nothing), max_buffered, coalesce)


async def test_one_frame_for_many_connections_is_encoded_once() -> None:
    frame = event_frame("1-0", b'{"user_id":"alice"}')
    raws = [FakeRaw() for _ in range(3)]
    for raw in raws:
        await transport(raw).send("event", "1-0", frame)
    first = raws[0].written[0]
    assert first == ws_text_frame(frame)
    assert all(raw.written == [first] and raw.written[0] is first for raw in raws)
    # Equal bytes in another object (a replayed frame) are encoded anew, never confused.
    again = event_frame("1-0", b'{"user_id":"alice"}')
    other = FakeRaw()
    await transport(other).send("event", "1-0", again)
    assert other.written == [first] and other.written[0] is not first


async def test_a_coalesced_message_is_one_frame_of_newline_joined_frames() -> None:
    raw = FakeRaw()
    frames = [event_frame(f"{i}-0", b"{}") for i in range(3)]
    await transport(raw).send_many([("event", f"{i}-0", f) for i, f in enumerate(frames)])
    assert raw.written == [ws_text_frame(join_frames(frames))]


@pytest.mark.parametrize(("coalesce", "shape"), [(2, [2, 2, 1]), (1, [1] * 5), (16, [5])])
async def test_many_frames_are_messages_of_coalesce_frames_in_one_write(
        coalesce: int, shape: list[int]) -> None:
    raw = FakeRaw()
    frames = [event_frame(f"{i}-0", b"{}") for i in range(5)]
    t = transport(raw, coalesce=coalesce)
    await t.send_many([("event", f"{i}-0", f) for i, f in enumerate(frames)])
    assert len(raw.written) == 1
    messages, at = [], 0
    for n in shape:
        messages.append(ws_text_frame(join_frames(frames[at : at + n])))
        at += n
    assert raw.written[0] == b"".join(messages)


async def test_a_live_frame_is_written_at_once_unless_the_transport_must_wait() -> None:
    raw = FakeRaw()
    t = transport(raw, max_buffered=100)
    frame = event_frame("1-0", b"{}")
    assert t.send_now(frame) and raw.written == [ws_text_frame(frame)]
    raw.paused = True
    assert not t.send_now(frame) and len(raw.written) == 1  # the session queues it
    raw.paused = False
    raw.buffered = 101
    with pytest.raises(ClientTooSlow):
        t.send_now(frame)
    raw.open = False
    assert not t.send_now(frame)
    assert not transport(None).send_now(frame)  # Starlette's path: always the session's


async def test_a_burst_is_one_write_of_coalesce_frame_messages_encoded_once_for_all_tabs(
        ) -> None:
    frames = [event_frame(f"{i}-0", b"{}") for i in range(5)]
    raws = [FakeRaw() for _ in range(3)]
    for raw in raws:
        assert transport(raw, coalesce=2).send_now_many(frames)
    first = raws[0].written[0]
    assert first == b"".join(ws_text_frame(join_frames(frames[i : i + 2])) for i in (0, 2, 4))
    assert all(raw.written == [first] and raw.written[0] is first for raw in raws)
    # Another list (a session that dropped a frame of the burst) is encoded on its own.
    other = FakeRaw()
    assert transport(other, coalesce=2).send_now_many(frames[1:])
    assert other.written == [ws_text_frame(join_frames(frames[1:3])) +
                             ws_text_frame(join_frames(frames[3:]))]
    raw = FakeRaw()
    t = transport(raw, max_buffered=100)
    raw.paused = True
    assert not t.send_now_many(frames) and raw.written == []  # the session queues them
    raw.paused, raw.buffered = False, 101
    with pytest.raises(ClientTooSlow):
        t.send_now_many(frames)
    assert len(raw.written) == 1  # written, then too slow: the session ends with 4008
    raw.open = False
    assert not t.send_now_many(frames)
    assert not transport(None).send_now_many(frames)  # Starlette's path: the session's


async def test_writes_wait_for_a_paused_transport_and_refusals_end_the_session() -> None:
    raw = FakeRaw()
    t = transport(raw, max_buffered=100)
    raw.paused = True
    await t.send("ping", None, b'{"type":"ping"}')
    assert raw.drains == 1 and len(raw.written) == 1
    raw.buffered = 101  # more than the client may hold
    with pytest.raises(ClientTooSlow):
        await t.send("event", "1-0", b"{}")
    await t.ping()  # the keepalive is not what makes a client too slow
    raw.open = False
    with pytest.raises(WebSocketDisconnect):
        await t.send("event", "2-0", b"{}")
    with pytest.raises(WebSocketDisconnect):
        await t.ping()


async def test_without_the_extension_frames_go_through_starlette() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    ws = WebSocket({"type": "websocket", "path": "/", "headers": []}, receive, send)
    await ws.accept()
    t = WebSocketTransport(ws)
    assert t.raw is None
    await t.send("event", "1-0", b'{"a":1}')
    await t.send_many([("event", "1-0", b"{}"), ("event", "2-0", b"{}")])
    assert [m.get("text") for m in sent[1:]] == ['{"a":1}', "{}\n{}"]


# -- the gateway under uvicorn ------------------------------------------------------------

async def test_the_gateway_writes_raw_encoding_each_frame_once_for_all_tabs(
        settings_factory: Callable[..., Resolved], redis: Any, keys: Keys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def starlette_send(*_: Any) -> None:
        raise AssertionError("the gateway sent through Starlette under uvicorn")

    monkeypatch.setattr(WebSocket, "send_text", starlette_send)
    encodings: list[bytes] = []

    def counting(payload: bytes) -> bytes:
        encodings.append(payload)
        return ws_text_frame(payload)

    monkeypatch.setattr(ws_mod, "ws_text_frame", counting)
    settings = settings_factory(secret=SECRET)
    log = make_log(redis, keys)
    seen = await publish(log, "alice", 1)
    async with serving(create_app(settings), settings) as url:
        tabs = [await WsClient.open(ws_url(url, "alice")) for _ in range(4)]
        for tab in tabs:
            await tab.until(lambda c: c.types() == ["hello"])
        live: list[str] = []
        for i in range(5):  # one at a time: each goes out alone, not coalesced
            live += await publish(log, "alice", 1, start=1 + i)
            for tab in tabs:
                await tab.until_events(i + 1)
        for tab in tabs:
            assert_exact(tab.events(), live)
        frames = [frame for frame in encodings if frame.startswith(b'{"type":"event"')]
        # Once per published frame for the four tabs (20 without the sharing); a tab whose
        # catch-up read after its `hello` raced the first publish got that one replayed,
        # in bytes of its own.
        assert len(live) <= len(frames) <= len(live) + len(tabs) - 1

        # A burst (messages that reach the gateway in one read) goes to each tab as one
        # message, encoded once for all four.
        encodings.clear()
        before = [tab.messages for tab in tabs]
        burst = [event_frame(f"{9_000_000_000_000 + i}-0", b'{"user_id":"alice"}')
                 for i in range(3)]
        pipe = redis.pipeline(transaction=True)  # EXEC: Redis writes the three at once
        for frame in burst:
            pipe.publish(keys.live("alice"), frame)
        await pipe.execute()
        for tab, messages in zip(tabs, before, strict=True):
            await tab.until_events(len(live) + 3)
            assert tab.events()[-3:] == [f"{9_000_000_000_000 + i}-0" for i in range(3)]
            assert tab.messages == messages + 1
        assert encodings == [join_frames(burst)]
        for tab in tabs:
            await tab.close()

        # A replay goes out coalesced, each message encoded once.
        missed = await publish(log, "alice", 100, start=6)
        late = await WsClient.open(ws_url(url, "alice", seen[0]))
        await late.until(lambda c: "recovered" in c.types())
        await late.close()
    assert_exact(late.events(), live + missed)
    assert late.messages <= len(late.frames) // 4

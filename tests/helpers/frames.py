"""What a session transport or a WebSocket client received: frames, and the close code."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from websockets.exceptions import ConnectionClosed

from livefeed.gateway.live import FrameType
from tests.gateway.livehelp import WsClient
from tests.helpers.waiting import eventually


class Recorder:
    """A transport that keeps (type, sse id, frame) and can be made to stall."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, str | None, dict[str, Any]]] = []
        self.messages = 0  # coalesced writes (send_many)
        self.batch_sizes: list[int] = []
        self.stalled = False
        self.written_now = 0  # live frames the hub's reader wrote itself (send_now)
        self.bursts: list[int] = []  # the frames of each burst it wrote itself

    async def send(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None:
        while self.stalled:
            await anyio.sleep(3600)
        self.frames.append((kind, feed_id, json.loads(frame)))

    def send_now(self, frame: bytes) -> bool:
        if self.stalled:
            return False  # as a paused transport: the session queues it
        self.frames.append(("event", None, json.loads(frame)))
        self.written_now += 1
        return True

    def send_now_many(self, frames: list[bytes]) -> bool:
        """A burst, frame by frame through `send_now` (all or, when the first is refused,
        nothing); `bursts` keeps the size of each taken."""
        for i, frame in enumerate(frames):
            if not self.send_now(frame):
                assert i == 0, "a burst is taken whole or not at all"
                return False
        self.bursts.append(len(frames))
        return True

    async def send_many(self, frames: list[tuple[FrameType, str | None, bytes]]) -> None:
        self.messages += 1
        self.batch_sizes.append(len(frames))
        for out in frames:
            await self.send(*out)

    def events(self) -> list[str]:
        return [f["id"] for k, _, f in self.frames if k == "event"]

    def types(self) -> list[str]:
        return [k for k, _, _ in self.frames]

    async def until(self, done: Callable[[Recorder], bool], timeout: float = 30) -> None:
        await eventually(lambda: done(self), what="the expected frames", timeout=timeout,
                         interval=0.01)


async def closed_code(client: WsClient, timeout: float = 30) -> int | None:
    with anyio.fail_after(timeout):
        try:
            while True:
                await client.conn.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

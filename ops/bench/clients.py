"""Load-generator process: many WebSocket clients, frame counts and latencies.

Run as `python -m ops.bench.clients`; reads one JSON `Spec` line on stdin, connects,
prints `ready <n> <failed>`, then `progress <frames>` lines every 50 ms; on a `stop`
line it prints `result <json>` and exits. Separate processes keep the load generator
off the gateway's event loop (though on 2 cores they still share the machine).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Literal

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from livefeed.schemas.frames import split_message

PREFIX = "bench t="


class Spec(msgspec.Struct):
    url: str  # ws://host:port/v1/ws
    tokens: list[str]
    # reconnect: one connection at a time, each closed once recovered (`last_id`)
    mode: Literal["count", "latency", "reconnect"] = "count"
    last_id: str | None = None


class Outcome(msgspec.Struct):
    frames: int
    events: int
    latencies_us: list[float]
    closed: dict[str, int]
    recovered_s: list[float]
    connect_errors: dict[str, int]


class _Data(msgspec.Struct):
    preview: str | None = None


class _Frame(msgspec.Struct):
    type: str
    data: _Data | None = None


_decode = msgspec.json.Decoder(_Frame).decode


def sent_at(ns: int) -> str:
    """The preview that carries the send time (CLOCK_MONOTONIC is system-wide on Linux)."""
    return f"{PREFIX}{ns}"


class Clients:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.frames = 0
        self.events = 0
        self.latencies: list[float] = []
        self.closed: dict[str, int] = {}
        self.recovered: list[float] = []
        self.conns: list[ClientConnection] = []
        self.failed = 0
        self.errors: dict[str, int] = {}

    async def open(self, token: str, sem: asyncio.Semaphore) -> ClientConnection | None:
        """Connect and wait for the hello; a real client retries, so do we (3 tries)."""
        url = self.spec.url
        if self.spec.last_id:
            url += f"?last_id={self.spec.last_id}"
        # The token in a header (never in the URL): one round trip less than an auth message.
        auth = {"authorization": f"Bearer {token}"}
        for attempt in range(3):
            async with sem:
                try:
                    start = time.perf_counter()
                    ws = await connect(url, max_size=None, open_timeout=60, ping_interval=None,
                                       compression=None, max_queue=None,
                                       additional_headers=auth)
                    # The hello is the first frame; a message may carry more after it.
                    after_hello = split_message(await ws.recv(decode=False))[1:]
                    break
                except (OSError, ConnectionClosed, TimeoutError, InvalidStatus) as exc:
                    reason = f"{type(exc).__name__}: {exc}"[:120]
                    self.errors[reason] = self.errors.get(reason, 0) + 1
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            self.failed += 1
            return None
        if not self.spec.last_id:
            for raw in after_hello:
                self._live(raw)
        elif not self._recovering(after_hello, start):
            while not self._recovering(split_message(await ws.recv(decode=False)), start):
                pass
        return ws

    def _recovering(self, raws: list[bytes], start: float) -> bool:
        """The frames of one message while recovering; True once `recovered` or `reset` was
        among them (frames after it in the same message are live ones, counted as such)."""
        done = False
        for raw in raws:
            if done:
                self._live(raw)
                continue
            self.frames += 1
            kind = _decode(raw).type
            if kind == "event":
                self.events += 1
            elif kind in ("recovered", "reset"):
                self.recovered.append(time.perf_counter() - start)
                done = True
        return done

    def _live(self, raw: bytes) -> None:
        self.frames += 1
        if self.spec.mode == "latency":
            self._latency(raw)

    def _latency(self, raw: bytes) -> None:
        frame = _decode(raw)
        if frame.type == "event" and frame.data and frame.data.preview and \
                frame.data.preview.startswith(PREFIX):
            t = int(frame.data.preview[len(PREFIX):].split()[0])
            self.latencies.append((time.monotonic_ns() - t) / 1000)
            self.events += 1

    async def listen(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                for raw in split_message(message):
                    self._live(raw)
        except ConnectionClosed as exc:
            code = str(exc.rcvd.code if exc.rcvd else "none")
            self.closed[code] = self.closed.get(code, 0) + 1


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main() -> None:
    loop = asyncio.get_running_loop()
    spec = msgspec.json.decode(await loop.run_in_executor(None, sys.stdin.readline), type=Spec)
    clients = Clients(spec)
    sem = asyncio.Semaphore(64)
    if spec.mode == "reconnect":
        done = 0
        for token in spec.tokens:
            ws = await clients.open(token, sem)
            if ws is not None:
                done += 1
                await ws.close()
        conns: list[ClientConnection] = []
    else:
        opened = await asyncio.gather(*(clients.open(t, sem) for t in spec.tokens))
        conns = [ws for ws in opened if ws is not None]
        done = len(conns)
    if clients.errors:
        sys.stderr.write(f"clients: connect errors (retried) {clients.errors}\n")
    _out(f"ready {done} {clients.failed}")
    tasks = [asyncio.create_task(clients.listen(ws)) for ws in conns]

    async def progress() -> None:
        while True:
            _out(f"progress {clients.frames}")
            await asyncio.sleep(0.05)

    reporter = asyncio.create_task(progress())
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() not in ("stop", ""):
        pass
    reporter.cancel()
    outcome = Outcome(frames=clients.frames, events=clients.events,
                      latencies_us=clients.latencies, closed=clients.closed,
                      recovered_s=clients.recovered, connect_errors=clients.errors)
    _out("result " + msgspec.json.encode(outcome).decode())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())

"""The benchmark's side of the `ops.bench.clients` processes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import anyio
import msgspec
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from livefeed.ops.bench.clients import Outcome, Spec


class LoadGen:
    """One client process: `ready` once every connection got its hello, live `frames`."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.frames = 0
        self.connected = 0
        self.failed = 0
        self.ready = anyio.Event()
        self.outcome: Outcome | None = None
        self._done = anyio.Event()
        self.proc: Process | None = None

    async def start(self, tg: TaskGroup) -> None:
        self.proc = await anyio.open_process(
            [sys.executable, "-m", "livefeed.ops.bench.clients"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=None,
        )
        assert self.proc.stdin is not None
        await self.proc.stdin.send(msgspec.json.encode(self.spec) + b"\n")
        tg.start_soon(self._read)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stream = BufferedByteReceiveStream(self.proc.stdout)
        try:
            while True:
                line = await stream.receive_until(b"\n", 1 << 28)
                kind, _, rest = line.partition(b" ")
                if kind == b"progress":
                    self.frames = int(rest)
                elif kind == b"ready":
                    ok, failed = rest.split()
                    self.connected, self.failed = int(ok), int(failed)
                    self.ready.set()
                elif kind == b"result":
                    self.outcome = msgspec.json.decode(rest, type=Outcome)
                    self.frames = self.outcome.frames
                    break
        except (anyio.EndOfStream, anyio.IncompleteRead):
            pass
        finally:
            self.ready.set()
            self._done.set()

    async def stop(self) -> Outcome:
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.proc.stdin.send(b"stop\n")
        with anyio.fail_after(60):
            await self._done.wait()
            await self.proc.wait()
        if self.outcome is None:
            raise RuntimeError(f"client process exited with {self.proc.returncode}, no result")
        return self.outcome

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def clients(specs: list[Spec], timeout: float = 120) -> AsyncIterator[list[LoadGen]]:
    """Start one process per spec, wait until all are connected; kill leftovers after."""
    async with anyio.create_task_group() as tg:
        gens = [LoadGen(spec) for spec in specs]
        try:
            for g in gens:
                await g.start(tg)
            with anyio.fail_after(timeout):
                for g in gens:
                    await g.ready.wait()
            failed = sum(g.failed for g in gens)
            if failed or any(g.connected == 0 and g.spec.tokens for g in gens):
                raise RuntimeError(f"{failed} of {sum(len(g.spec.tokens) for g in gens)} "
                                   "WebSocket clients could not connect")
            yield gens
        finally:
            for g in gens:
                await g.kill()
            tg.cancel_scope.cancel()


def total_frames(gens: list[LoadGen]) -> int:
    return sum(g.frames for g in gens)


async def wait_frames(gens: list[LoadGen], target: int, timeout: float) -> float:
    """Wait until the clients counted `target` frames in all; the monotonic time it happened."""
    deadline = time.monotonic() + timeout
    while total_frames(gens) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"clients got {total_frames(gens)} of {target} frames "
                               f"in {timeout:.0f}s")
        await anyio.sleep(0.01)
    return time.monotonic()


def split(tokens: list[str], parts: int) -> list[list[str]]:
    return [tokens[i::parts] for i in range(parts)]

"""`conn-memory`: what one idle WebSocket connection of the real gateway is made of.

Two gateway processes (`ops.bench.tracedgw`): one untraced for the RSS per connection
(as `fanout` measures it), one under tracemalloc for the Python heap per connection:
the heap is dumped with 20 warm-up connections open and again with N more idle ones,
and the difference is divided by N, by allocation site (innermost line), by the nearest
livefeed line on the allocation's stack, by library, and by object type (gc census).
What tracemalloc does not see (RSS minus traced) is C memory: uvloop transports, the
kernel's view of page use, allocator slack.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import anyio
import msgspec

from livefeed.core import auth
from livefeed.core.embedded import free_port
from livefeed.core.settings import Resolved
from livefeed.ops.bench import loadgen, procs
from livefeed.ops.bench.clients import Spec
from livefeed.ops.bench.fanout import CLIENT_PROCS
from livefeed.ops.bench.runner import BenchResult, Context, row
from livefeed.ops.procs import Child, child_env

FRAMES = 12
TOP = 12
ROOT = str(Path(__file__).resolve().parents[2])  # the checkout's top (livefeed's sources)
_NOISE = ("tracemalloc.py", "<frozen importlib", "linecache.py", "tracedgw.py")


def _start(ctx: Context, s: Resolved, folder: Path, frames: int) -> tuple[Child, int]:
    port = free_port()
    child = Child([sys.executable, "-m", "livefeed.ops.bench.tracedgw", str(folder), str(frames),
                   "--", "gateway", "--port", str(port)],
                  child_env(s), ctx.workdir / f"conn-memory-{frames}-{port}.log").start()
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", child, timeout=60)
    except BaseException:
        child.terminate()
        raise
    return child, port


async def _dump(child: Child, folder: Path) -> int:
    k = len(list(folder.glob("*.done"))) + 1
    os.kill(child.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not (folder / f"{k}.done").exists():
        if time.monotonic() > deadline or not child.alive():
            raise RuntimeError(f"no heap dump from the gateway:\n{child.tail()}")
        await anyio.sleep(0.1)
    return k


async def _sample(ctx: Context, s: Resolved, n: int, frames: int, folder: Path,
                  ) -> tuple[float, int, int]:
    """(RSS KiB per connection, dump number before, after) with n idle clients."""
    assert s.secret
    child, port = _start(ctx, s, folder, frames)
    try:
        url = f"ws://127.0.0.1:{port}/v1/ws"
        warm = [auth.mint(s.secret, f"warm{i}") for i in range(20)]
        async with loadgen.clients([Spec(url, warm[:10])]):
            pass
        async with loadgen.clients([Spec(url, warm[10:])]):
            await anyio.sleep(0.5)
            before = procs.rss_kb(child.pid)
            first = await _dump(child, folder)
            tokens = [auth.mint(s.secret, f"idle{i}") for i in range(n)]
            specs = [Spec(url, part) for part in loadgen.split(tokens, CLIENT_PROCS)]
            async with loadgen.clients(specs):
                await anyio.sleep(1.0)
                per_conn = (procs.rss_kb(child.pid) - before) / n
                second = await _dump(child, folder)
    finally:
        child.terminate()
    return per_conn, first, second


_STDLIB = str(Path(os.__file__).parent) + "/"
_OURS = tuple(f"/livefeed/{part}/" for part in ("gateway", "core", "schemas"))


def _where(frame: tracemalloc.Frame) -> str:
    path = frame.filename
    if "site-packages/" in path:
        path = path.split("site-packages/")[-1]
    elif path.startswith(ROOT):
        path = path[len(ROOT) + 1:]
    elif path.startswith(_STDLIB):
        path = path[len(_STDLIB):]
    return f"{path}:{frame.lineno}"


def _library(tb: tracemalloc.Traceback) -> str:
    """The package of the innermost frame (site-packages), or the stdlib module, or ours."""
    path = tb[-1].filename
    if "site-packages/" in path:
        return path.split("site-packages/")[-1].split("/")[0]
    if path.startswith(ROOT):
        return "livefeed"
    return "stdlib " + Path(path).stem


def _ours(tb: tracemalloc.Traceback) -> str:
    """The innermost gateway/core/schemas line on the allocation's stack (who asked for
    it); else the server's library (uvicorn, starlette... on their own)."""
    for frame in reversed(list(tb)):
        if frame.filename.startswith(ROOT) and any(part in frame.filename for part in _OURS):
            return _where(frame)
    return f"(no livefeed frame: {_library(tb)})"


def breakdown(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int,
              ) -> tuple[float, dict[str, list[tuple[str, float, float]]]]:
    """(traced KiB per connection, {view: [(key, KiB per conn, objects per conn)]})."""
    noise = [tracemalloc.Filter(False, f"*{pat}*") for pat in _NOISE]
    before, after = before.filter_traces(noise), after.filter_traces(noise)
    diffs = after.compare_to(before, "traceback")
    views: dict[str, tuple[Counter[str], Counter[str]]] = {
        v: (Counter(), Counter()) for v in ("site", "livefeed line", "library")}
    total = 0
    for d in diffs:
        total += d.size_diff
        for view, key in (("site", _where(d.traceback[-1])), ("livefeed line", _ours(d.traceback)),
                          ("library", _library(d.traceback))):
            views[view][0][key] += d.size_diff
            views[view][1][key] += d.count_diff
    out = {view: [(key, size / n / 1024, counts[key] / n)
                  for key, size in sizes.most_common(TOP)]
           for view, (sizes, counts) in views.items()}
    return total / n / 1024, out


def type_census(folder: Path, first: int, second: int, n: int) -> list[tuple[str, float, float]]:
    """[(type, objects per conn, shallow KiB per conn)] grown between two dumps."""
    Census = dict[str, tuple[int, int]]
    a = msgspec.json.decode((folder / f"{first}.types.json").read_bytes(), type=Census)
    b = msgspec.json.decode((folder / f"{second}.types.json").read_bytes(), type=Census)
    grown = [(name, (cnt - a.get(name, (0, 0))[0]) / n, (size - a.get(name, (0, 0))[1]) / n / 1024)
             for name, (cnt, size) in b.items()]
    return sorted((g for g in grown if g[1] > 0.5), key=lambda g: -g[2])[:TOP]


async def run(ctx: Context, result: BenchResult) -> None:
    n = ctx.size(100, 2_000)
    async with ctx.namespace() as s:
        plain_dir, traced_dir = ctx.workdir / "conn-memory-rss", ctx.workdir / "conn-memory-heap"
        rss, _, _ = await _sample(ctx, s, n, 0, plain_dir)
        _, first, second = await _sample(ctx, s, n, FRAMES, traced_dir)
    heap, views = breakdown(tracemalloc.Snapshot.load(str(traced_dir / f"{first}.snapshot")),
                            tracemalloc.Snapshot.load(str(traced_dir / f"{second}.snapshot")), n)
    types = type_census(traced_dir, first, second, n)
    result.rows += [
        row("Python heap per idle connection (tracemalloc)", heap, "KiB",
            "gateway RSS per idle connection", rss),
    ]
    ctx.note(f"{n} idle connections (one user each, after their hello) beside 20 warm-up "
             f"ones; RSS per connection {rss:.1f} KiB (untraced gateway); Python heap (traced "
             f"gateway, {FRAMES} frames) {heap:.1f} KiB; the difference ({rss - heap:.1f} KiB) "
             "is C memory (uvloop transports, hiredis) and allocator slack")
    for view, entries in views.items():
        ctx.note(f"heap per connection by {view}: " + "; ".join(
            f"{kib:.2f} KiB ({objs:.1f}) {key}" for key, kib, objs in entries if kib >= 0.05))
    ctx.note("gc-tracked objects per connection by type (count, shallow KiB): " + "; ".join(
        f"{name} {cnt:.1f} {kib:.2f}" for name, cnt, kib in types))

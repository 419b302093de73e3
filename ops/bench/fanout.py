"""`fanout`: frames/s from one gateway process to N clients, and memory per idle connection.

Frames are PUBLISHed straight to the users' live channels (byte-identical to what the
fanout script publishes), so the figure is the gateway's own fan-out, not the pipeline's.
The baselines are plain uvicorn + Starlette WebSocket apps (`ops.bench.plainws`) with
each uvicorn WebSocket implementation, measured in the same run the same way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import anyio

from livefeed.core import auth, redis_client
from livefeed.core.keys import Keys
from livefeed.core.settings import Resolved
from livefeed.ops.bench import loadgen, procs
from livefeed.ops.bench.clients import Spec
from livefeed.ops.bench.runner import BenchResult, Context, Goal, row
from livefeed.ops.procs import Child
from livefeed.schemas.frames import event_frame

CLIENT_PROCS = 2
# Gateway memory per idle WebSocket (issue 13; /v1/ws on the gateway's own protocol).
MEMORY_GOAL_KIB = 17
WINDOW = 4000  # frames in flight: keeps Redis' pub/sub output buffer and send queues small
PAYLOAD = (b'{"user_id":"u","subject":"Weekly digest","sender":"news@example.com",'
           b'"received_at":"2026-01-01T00:00:00Z","preview":"' + b"x" * 120 + b'"}')


@contextlib.contextmanager
def plain_server(ctx: Context, impl: str, s: Resolved) -> Iterator[tuple[Child, int]]:
    with procs.baseline_server(ctx.workdir, s, "plainws", f"plainws-{impl}",
                               ["--ws", impl]) as pair:
        yield pair


async def warm_up(url: str, secret: str) -> None:
    """Open and close 20 connections, so first-connection costs (imports, pools) are out
    of an idle-memory figure taken next."""
    warm = [auth.mint(secret, f"warm{i}") for i in range(20)]
    async with loadgen.clients([Spec(url, warm)]):
        pass
    await anyio.sleep(0.5)


def specs(url: str, secret: str, users: list[str]) -> list[Spec]:
    """One client per user, spread over CLIENT_PROCS client processes."""
    tokens = [auth.mint(secret, u) for u in users]
    return [Spec(url, part) for part in loadgen.split(tokens, CLIENT_PROCS)]


async def _measure(ctx: Context, name: str, child: Child, port: int, s: Resolved,
                   users: list[str], rounds: int) -> tuple[float, float, dict[str, int]]:
    """(KiB per idle connection, frames/s, close codes) against one server process."""
    assert s.secret
    url = f"ws://127.0.0.1:{port}/v1/ws"
    await warm_up(url, s.secret)
    before = procs.rss_kb(child.pid)
    async with loadgen.clients(specs(url, s.secret, users)) as gens:
        await anyio.sleep(1.0)
        per_conn = (procs.rss_kb(child.pid) - before) / len(users)
        with procs.profiled(child.pid, ctx.profile_dir, f"fanout-{name}"):
            rate = await _fan_out(s, users, rounds, gens)
        closed: dict[str, int] = {}
        for g in gens:
            for code, n in (await g.stop()).closed.items():
                closed[code] = closed.get(code, 0) + n
    return per_conn, rate, closed


async def _fan_out(s: Resolved, users: list[str], rounds: int,
                   gens: list[loadgen.LoadGen]) -> float:
    keys = Keys(s.prefix)
    redis: Any = redis_client.connect(s.redis_url)
    base = loadgen.total_frames(gens)
    total = rounds * len(users)
    sent = 0
    try:
        start = time.monotonic()
        for r in range(rounds):
            frame = event_frame(f"{1_800_000_000_000 + r}-0", PAYLOAD)
            for i in range(0, len(users), 500):
                while sent - (loadgen.total_frames(gens) - base) > WINDOW:
                    await anyio.sleep(0.002)
                pipe = redis.pipeline(transaction=False)
                for user in users[i : i + 500]:
                    pipe.publish(keys.live(user), frame)
                await pipe.execute()
                sent += len(users[i : i + 500])
        end = await loadgen.wait_frames(gens, base + total, timeout=120)
    finally:
        await redis.aclose()
    return total / (end - start)


async def run(ctx: Context, result: BenchResult) -> None:
    n = ctx.size(200, 3_000)
    rounds = ctx.size(10, 30)
    users = [f"fan{i}" for i in range(n)]
    measured: dict[str, tuple[float, float, dict[str, int]]] = {}
    async with ctx.namespace() as s:
        with procs.gateway(s, ctx.workdir, "fanout-gateway") as (gw, port):
            measured["gateway"] = await _measure(ctx, "gateway", gw, port, s, users, rounds)
    for impl in ("wsproto", "websockets-sansio", "websockets"):
        async with ctx.namespace() as s:
            with plain_server(ctx, impl, s) as (child, port):
                measured[impl] = await _measure(ctx, impl, child, port, s, users, rounds)

    mem, rate, closed = measured["gateway"]
    result.rows += [
        row(f"frames/s to {n} clients", rate, "frames/s", "plain uvicorn app (wsproto)",
            measured["wsproto"][1]),
        row("memory per idle connection", mem, "KiB", "plain uvicorn app (wsproto)",
            measured["wsproto"][0], Goal("value", "<=", MEMORY_GOAL_KIB)),
    ]
    for impl in ("websockets-sansio", "websockets"):
        result.rows += [
            row(f"plain app frames/s ({impl})", measured[impl][1], "frames/s",
                "plain app (wsproto)", measured["wsproto"][1]),
            row(f"plain app KiB/conn ({impl})", measured[impl][0], "KiB",
                "plain app (wsproto)", measured["wsproto"][0]),
        ]
    if closed:
        ctx.note(f"gateway closed client connections during the fan-out: {closed}")
    ctx.note(f"{n} clients, one per user, in {CLIENT_PROCS} client processes; {rounds} "
             f"rounds of one frame per user PUBLISHed from the bench process, at most "
             f"{WINDOW} frames in flight; gateway, client processes, Redis and the bench "
             "share the 2 cores, so the gateway gets about one")
    ctx.note("memory: RSS growth of the server process from 20 warm-up connections to "
             f"{n} idle connections (after a hello each), divided by {n}")

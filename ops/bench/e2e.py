"""`e2e`: latency from POST /v1/events to a connected WebSocket client, p50/p99.

Both delivery modes run in the same run at the same fixed rate with the same clients
(one user each, in separate client processes), both persisting every event to PostgreSQL
(streams: the persist consumer; pubsub: the request itself); the floor is bare Redis
PUBLISH to a subscriber at the same rate. The send time travels in the event's `preview`
(CLOCK_MONOTONIC, which every process on the machine shares).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio
import msgspec

from livefeed.core import auth, redis_client
from livefeed.core.settings import Resolved
from livefeed.ops.bench import data, httpload, loadgen, procs
from livefeed.ops.bench.clients import Spec, sent_at
from livefeed.ops.bench.runner import BenchResult, Context, Goal, row
from livefeed.ops.stats import percentile

CLIENT_PROCS = 2
TICK_S = 0.01
SENDERS = 4


Send = Callable[[int, int], Coroutine[Any, Any, None]]


async def _paced(rate: int, seconds: float, send: Send) -> None:
    """Call `send(tick, count)` every TICK_S so that `rate` events/s go out, concurrently."""
    per_tick = max(1, round(rate * TICK_S))
    ticks = int(seconds / TICK_S)
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(ticks):
            delay = start + i * TICK_S - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            tg.start_soon(send, i, per_tick)


async def _floor(s: Resolved, rate: int, seconds: float) -> list[float]:
    """PUBLISH-to-subscriber latencies (µs) of bare Redis pub/sub at `rate`."""
    sub: Any = redis_client.connect(s.redis_url, blocking=True)
    pub: Any = redis_client.connect(s.redis_url)
    channel = f"{s.prefix}:floor"
    latencies: list[float] = []
    pubsub = sub.pubsub()
    await pubsub.subscribe(channel)

    async def read() -> None:
        async for msg in pubsub.listen():
            if msg["type"] == "message":
                latencies.append((time.monotonic_ns() - int(msg["data"])) / 1000)

    async def send(_: int, count: int) -> None:
        for _ in range(count):
            await pub.publish(channel, str(time.monotonic_ns()))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await _paced(rate, seconds, send)
            await anyio.sleep(0.5)
            tg.cancel_scope.cancel()
    finally:
        await pubsub.aclose()
        await sub.aclose()
        await pub.aclose()
    return latencies


@contextlib.asynccontextmanager
async def _senders(port: int) -> AsyncIterator[asyncio.Queue[Any]]:
    pool: asyncio.Queue[Any] = asyncio.Queue()
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(SENDERS)]
    for c in conns:
        pool.put_nowait(c)
    try:
        yield pool
    finally:
        for _, writer in conns:
            writer.close()


async def _mode(ctx: Context, s: Resolved, users: list[str], rate: int,
                seconds: float) -> tuple[list[float], int, int, list[float]]:
    """(latencies µs, events sent, events received, POST round trips µs) for one delivery
    mode."""
    assert s.secret and s.webhook_secret
    hook = s.webhook_secret
    with contextlib.ExitStack() as stack:
        if s.delivery == "streams":
            # Persistence on, as in production (and as pubsub mode persists in the request):
            # the PostgreSQL writer runs beside the fanout consumer.
            stack.enter_context(procs.consumer(s, ctx.workdir, "persist"))
            stack.enter_context(procs.consumer(s, ctx.workdir, "fanout"))
        gw, port = stack.enter_context(procs.gateway(s, ctx.workdir, f"e2e-{s.delivery}"))
        url = f"ws://127.0.0.1:{port}/v1/ws"
        tokens = [auth.mint(s.secret, u) for u in users]
        specs = [Spec(url, part, mode="latency") for part in loadgen.split(tokens, CLIENT_PROCS)]
        sent = 0
        errors: dict[int, int] = {}
        posts: list[float] = []  # from the first event's timestamp to the 202
        async with loadgen.clients(specs) as gens, _senders(port) as pool:

            async def send(tick: int, count: int, preview: str | None = None) -> None:
                nonlocal sent
                start = tick * count
                picked = [users[(start + k) % len(users)] for k in range(count)]
                stamp = time.monotonic_ns()
                evs = data.events(count, picked, seed=tick + len(users) * 7919,
                                  preview=preview or sent_at(stamp))
                body = msgspec.json.encode(evs)
                request = httpload.post_request("/v1/events", body,
                                                auth.signature_headers(hook, body))
                conn = await pool.get()
                try:
                    status, _ = await httpload._exchange(conn[0], conn[1], request)
                finally:
                    pool.put_nowait(conn)
                if status == 202:
                    if preview is None:
                        sent += count
                        posts.append((time.monotonic_ns() - stamp) / 1000)
                else:
                    errors[status] = errors.get(status, 0) + 1

            async def warm(tick: int, count: int) -> None:
                await send(tick + 10_000_000, count, preview="warm-up")

            await _paced(rate, 0.5, warm)
            await anyio.sleep(0.5)
            base = loadgen.total_frames(gens)
            with procs.profiled(gw.pid, ctx.profile_dir, f"e2e-gateway-{s.delivery}"):
                await _paced(rate, seconds, send)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    await anyio.sleep(0.1)
                    if loadgen.total_frames(gens) - base >= sent:
                        break
            outcomes = [await g.stop() for g in gens]
        retried = sum(sum(o.connect_errors.values()) for o in outcomes)
        if retried:
            ctx.note(f"{s.delivery}: {retried} client connects failed once and were retried")
        if errors:
            ctx.note(f"{s.delivery}: ingest answered non-202 statuses {errors}")
    latencies = [x for o in outcomes for x in o.latencies_us]
    return latencies, sent, len(latencies), posts


async def run(ctx: Context, result: BenchResult) -> None:
    n_clients = ctx.size(100, 1_000)
    rate = ctx.size(200, 1_000)
    seconds = ctx.size(2, 10)
    users = [f"e2e{i}" for i in range(n_clients)]
    async with ctx.namespace() as s:
        floor = await _floor(s, rate, seconds)
    lat: dict[str, list[float]] = {}
    posts: dict[str, list[float]] = {}
    for mode in ("streams", "pubsub"):
        async with ctx.namespace(delivery=mode) as s:
            lat[mode], sent, got, posts[mode] = await _mode(ctx, s, users, rate, seconds)
        if got != sent:
            ctx.note(f"{mode}: {sent} events sent, {got} delivered to clients")

    def ms(values: list[float], q: float) -> float:
        p = percentile(values, q)
        return float("nan") if p is None else p / 1000

    result.rows += [
        row("streams p50", ms(lat["streams"], 50), "ms", "pubsub mode p50",
            ms(lat["pubsub"], 50), Goal("ratio", "<=", 2)),
        row("streams p99", ms(lat["streams"], 99), "ms", "Redis PUBLISH floor p99",
            ms(floor, 99), Goal("value", "<", 5)),
        row("pubsub p50", ms(lat["pubsub"], 50), "ms", "Redis PUBLISH floor p50",
            ms(floor, 50)),
        row("pubsub p99", ms(lat["pubsub"], 99), "ms", "Redis PUBLISH floor p99",
            ms(floor, 99), Goal("value", "<", 5)),
    ]
    # Where the time goes: the ingest POST's share (same clock, same timestamp).
    for mode in ("streams", "pubsub"):
        for q in (50, 99):
            result.rows.append(row(f"{mode}: POST answered 202, p{q}", ms(posts[mode], q), "ms",
                                   f"{mode} p{q}, POST to client", ms(lat[mode], q)))
    ctx.note(f"{rate} events/s for {seconds}s ({round(rate * TICK_S)} events per POST every "
             f"{TICK_S * 1000:.0f} ms, {SENDERS} keep-alive connections) to {n_clients} "
             f"clients (one user each) in {CLIENT_PROCS} client processes; gateway, fanout "
             "and persist consumers (streams), clients, Redis, Postgres and the sender share "
             "the 2 cores")

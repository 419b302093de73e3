"""`article`: the article's table, reproduced in one run for its three designs.

Each delivery mode runs on its own namespace with real processes: `pubsub` (the naive
design: one INSERT per newsletter in the webhook, then PUBLISH), `list` (the article's:
PUBLISH + RPUSH, a writer that empties the List every 500 ms, LMPOP 100 at a time, one
INSERT per batch) and `streams`
(livefeed). Every figure of `list` and `streams` is shown against `pubsub`, as in the
article, with the article's claim as the goal of the `list` row:

1. throughput: newsletters from the first POST (one per request, as webhooks come) to
   the last persisted row, per second, under more concurrent senders than the naive
   design keeps up with;
2. database round trips per 1,000 newsletters in that run, counted on the wire by a
   proxy every process of the deployment goes through (`ops/bench/pgcount.py`);
3. inbox sync: one user's inbox of 1,000 (and, without --quick, 10,000) newsletters
   posted as a burst of 100-event requests: until every row is persisted and every event
   reached that user's connected WebSocket client;
4. live latency: POST to a connected client, p50/p99, at a low steady rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import asyncpg
import msgspec

from livefeed.core import auth
from livefeed.core.settings import Resolved
from livefeed.ops.bench import data, httpload, loadgen, pgcount, procs
from livefeed.ops.bench.clients import Spec, sent_at
from livefeed.ops.bench.runner import BenchResult, Context, Goal, row
from livefeed.ops.stats import percentile
from livefeed.schemas.event import Event

MODES = ("pubsub", "list", "streams")
CONSUMERS = {"pubsub": (), "list": ("list-writer",), "streams": ("persist", "fanout")}
SENDERS = 32
SYNC_BATCH = 100
SYNC_SENDERS = 4
LIVE_USERS = 10
WARM_UP = 200
USERS = [f"t{i}" for i in range(100)]
# The article's claims, as ratios against its naive design (goals of the `list` rows).
CLAIMS = {"throughput": 1.40, "round trips": 0.01, "inbox sync": 0.55}
CLAIM_LATENCY_MS = 5.0


@dataclass
class Figures:
    throughput: float = 0.0  # newsletters/s
    round_trips: float = 0.0  # per 1,000 newsletters
    statements: float = 0.0  # per 1,000 newsletters
    sync_s: dict[int, float] | None = None
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")


class _Deployment:
    def __init__(self, s: Resolved, port: int) -> None:
        self.s = s
        self.port = port
        self.hook = s.webhook_secret or ""

    def request(self, events: list[Event]) -> bytes:
        body = msgspec.json.encode(events if len(events) > 1 else events[0])
        return httpload.post_request("/v1/events", body, {
            **auth.signature_headers(self.hook, body)})

    async def rows(self) -> int:
        conn = await asyncpg.connect(self.s.database_url)  # direct: never counted
        try:
            return int(await conn.fetchval("SELECT count(*) FROM newsletters"))
        finally:
            await conn.close()

    async def until_rows(self, n: int, timeout: float) -> float:
        """Wait until the table holds `n` rows; the monotonic time it was seen."""
        deadline = time.monotonic() + timeout
        while (have := await self.rows()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.s.delivery}: {have} of {n} rows after "
                                   f"{timeout:.0f}s")
            await anyio.sleep(0.02)
        return time.monotonic()

    async def post_all(self, requests: list[bytes], concurrency: int) -> None:
        statuses = await httpload.send_all(self.port, requests, concurrency)
        if set(statuses) != {202}:
            raise RuntimeError(f"{self.s.delivery}: ingest answered {statuses}")

    async def single_posts(self, n: int, seed: int) -> float:
        """`n` newsletters for 100 users, one per POST from SENDERS connections, until
        every row is persisted; the seconds it took."""
        requests = [self.request([e]) for e in data.events(n, USERS, seed=seed)]
        before = await self.rows()
        start = time.monotonic()
        await self.post_all(requests, SENDERS)
        return await self.until_rows(before + n, 60 + n / 100) - start


@contextlib.contextmanager
def _deploy(ctx: Context, s: Resolved, name: str) -> Iterator[_Deployment]:
    """The gateway and consumers of `s.delivery` for settings `s`."""
    with contextlib.ExitStack() as stack:
        for role in CONSUMERS[s.delivery]:
            stack.enter_context(procs.consumer(s, ctx.workdir, role))
        _, port = stack.enter_context(procs.gateway(s, ctx.workdir, f"article-{name}"))
        yield _Deployment(s, port)


async def _round_trips(ctx: Context, s: Resolved, figures: Figures) -> None:
    """A deployment whose processes all reach PostgreSQL through a counting proxy (its
    own, so that the timed runs are not slowed by the extra hop)."""
    n = ctx.size(300, 1_000)
    with pgcount.counting(s.database_url) as counter:
        routed = msgspec.structs.replace(s, database_url=counter.url_for(s.database_url))
        with _deploy(ctx, routed, f"{s.delivery}-counted") as d:
            d.s = s  # rows are read directly
            await d.single_posts(WARM_UP, seed=10)
            trips, statements = counter.round_trips, counter.statements
            await d.single_posts(n, seed=11)
            figures.round_trips = (counter.round_trips - trips) * 1000 / n
            figures.statements = (counter.statements - statements) * 1000 / n


async def _throughput(ctx: Context, d: _Deployment, figures: Figures) -> None:
    await d.single_posts(WARM_UP, seed=12)
    n = ctx.size(300, 3_000)
    figures.throughput = n / await d.single_posts(n, seed=13)


async def _sync(ctx: Context, d: _Deployment, sizes: list[int], figures: Figures) -> None:
    figures.sync_s = {}
    assert d.s.secret
    for i, size in enumerate(sizes):
        user = f"inbox{i}"
        spec = Spec(f"ws://127.0.0.1:{d.port}/v1/ws", [auth.mint(d.s.secret, user)])
        evs = data.events(size, [user], seed=100 + i)
        requests = [d.request(evs[k : k + SYNC_BATCH]) for k in range(0, size, SYNC_BATCH)]
        before = await d.rows()
        async with loadgen.clients([spec]) as gens:
            start = time.monotonic()
            await d.post_all(requests, SYNC_SENDERS)
            persisted = await d.until_rows(before + size, 60 + size / 100)
            delivered = await loadgen.wait_frames(gens, size, 60 + size / 100)
            await gens[0].stop()
        figures.sync_s[size] = max(persisted, delivered) - start


async def _latency(ctx: Context, d: _Deployment, figures: Figures) -> None:
    assert d.s.secret
    rate = ctx.size(50, 200)
    seconds = ctx.size(2, 5)
    users = [f"live{i}" for i in range(LIVE_USERS)]
    spec = Spec(f"ws://127.0.0.1:{d.port}/v1/ws", [auth.mint(d.s.secret, u) for u in users],
                mode="latency")
    total = int(rate * seconds)
    async with loadgen.clients([spec]) as gens:
        reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
        try:
            start = time.monotonic()
            for k in range(total):
                delay = start + k / rate - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                (ev,) = data.events(1, [users[k % len(users)]], seed=1000 + k,
                                    preview=sent_at(time.monotonic_ns()))
                status, _ = await httpload._exchange(reader, writer, d.request([ev]))
                if status != 202:
                    raise RuntimeError(f"{d.s.delivery}: ingest answered {status}")
        finally:
            writer.close()
        with contextlib.suppress(RuntimeError):
            await loadgen.wait_frames(gens, total, 15)
        (outcome,) = [await g.stop() for g in gens]
    lat = outcome.latencies_us
    if len(lat) < total:
        ctx.note(f"{d.s.delivery}: {total} live events sent, {len(lat)} reached the clients")
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    figures.p50_ms = float("nan") if p50 is None else p50 / 1000
    figures.p99_ms = float("nan") if p99 is None else p99 / 1000


async def run(ctx: Context, result: BenchResult) -> None:
    sizes = [1_000] if ctx.quick else [1_000, 10_000]
    figures: dict[str, Figures] = {}
    for mode in MODES:
        f = figures[mode] = Figures()
        async with ctx.namespace(delivery=mode) as s:
            await _round_trips(ctx, s, f)
            with _deploy(ctx, s, mode) as d:
                await _throughput(ctx, d, f)
                await _sync(ctx, d, sizes, f)
                await _latency(ctx, d, f)
    naive = figures["pubsub"]
    for mode in ("list", "streams"):
        f = figures[mode]

        def goal(name: str, claim: bool = mode == "list") -> Goal | None:
            """The article's claim on the ratio (only for its own design's rows)."""
            return Goal("ratio", ">=" if name == "throughput" else "<=",
                        CLAIMS[name]) if claim else None

        assert f.sync_s is not None and naive.sync_s is not None
        result.rows += [
            row(f"{mode}: throughput", f.throughput, "newsletters/s", "pubsub (naive)",
                naive.throughput, goal("throughput")),
            row(f"{mode}: DB round trips", f.round_trips, "per 1k", "pubsub (naive)",
                naive.round_trips, goal("round trips")),
            *[row(f"{mode}: inbox sync {size:,}", f.sync_s[size], "s", "pubsub (naive)",
                  naive.sync_s[size], goal("inbox sync")) for size in sizes],
            row(f"{mode}: live p50", f.p50_ms, "ms", "pubsub (naive)", naive.p50_ms,
                Goal("value", "<", CLAIM_LATENCY_MS) if mode == "list" else None),
            row(f"{mode}: live p99", f.p99_ms, "ms", "pubsub (naive)", naive.p99_ms),
        ]
    for mode, f in figures.items():
        ctx.note(f"{mode}: {f.statements:.0f} statements per 1k newsletters "
                 f"({f.round_trips:.0f} round trips)")
    ctx.note("goals of the `list` rows are the article's claims against its naive design: "
             "+40% throughput, -99% database round trips per batch, -45% inbox sync time "
             "(1,000+), Pub/Sub latency < 5 ms")
    ctx.note("`list`: every 500 ms the writer empties the List, one LMPOP of up to 100 and "
             "one INSERT per batch, the next pop at once while they come back full")
    ctx.note("round trips: Sync, Flush and simple Query messages sent to PostgreSQL by the "
             "deployment's processes (gateway and consumers), counted by a proxy they all go "
             f"through, after a warm-up of {WARM_UP} newsletters, in a run of its own (the "
             "timed runs connect directly); the naive design's include the pool's reset "
             "query on every connection release")
    ctx.note(f"throughput: one newsletter per POST from {SENDERS} keep-alive connections; "
             f"inbox sync: {SYNC_BATCH}-newsletter POSTs from {SYNC_SENDERS} connections, "
             "one connected client; live latency: POST to client (ingest included; the "
             f"article's figure is Pub/Sub alone), {LIVE_USERS} users. Gateway, consumers, "
             "clients, Redis and PostgreSQL share the machine's cores")

"""`persist`: rows/s of the persist consumer vs one INSERT per event and vs raw UNNEST.

The consumer runs as a real `livefeed consumer persist` process, idle on an empty
stream; the clock starts when the burst of entries is written to the ingest stream and
stops when every row is in Postgres and every entry is acked. So it covers the Redis
read, decode, batched insert and ack, as in production.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio
import asyncpg
from redis.exceptions import ResponseError

from livefeed.core import newsletters, redis_client
from livefeed.core.keys import PERSIST_GROUP, Keys
from livefeed.core.settings import Resolved
from livefeed.ops.bench import data, procs
from livefeed.ops.bench.runner import BenchResult, Context, Goal, Timer, row
from livefeed.schemas.stream import IngestEntry

BIG_BATCH = 1000


async def _naive(conn: asyncpg.Connection, rows: list[newsletters.Row]) -> float:
    with Timer() as t:
        for r in rows:
            await newsletters.insert_one(conn, r)
    return len(rows) / t.seconds


async def _ceiling(conn: asyncpg.Connection, rows: list[newsletters.Row], batch: int) -> float:
    with Timer() as t:
        for start in range(0, len(rows), batch):
            await newsletters.insert_batch(conn, rows[start : start + batch])
    return len(rows) / t.seconds


async def _group_ready(redis: Any, stream: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            groups = await redis.xinfo_groups(stream)
        except ResponseError:  # no stream yet
            groups = []
        if any(g["name"] in (PERSIST_GROUP, PERSIST_GROUP.encode()) for g in groups):
            return
        await anyio.sleep(0.05)
    raise RuntimeError(f"the persist consumer did not create its group on {stream}")


async def _drained(redis: Any, last_ids: dict[str, bytes]) -> bool:
    """Every stream read up to its last id and nothing pending."""
    for stream, last_id in last_ids.items():
        done = False
        for g in await redis.xinfo_groups(stream):
            if g["name"] in (PERSIST_GROUP, PERSIST_GROUP.encode()):
                done = g["pending"] == 0 and g["last-delivered-id"] == last_id
        if not done:
            return False
    return True


async def _consumer_rate(ctx: Context, s: Resolved, triples: list[IngestEntry],
                         ) -> float:
    """Rows/s of a `livefeed consumer persist` process draining a backlog of `triples`.

    The consumer is frozen (SIGSTOP) while the backlog is written, so the writer does not
    compete with it for the 2 cores; the clock runs from SIGCONT to the last ack.
    """
    keys = Keys(s.prefix, partitions=s.partitions)
    redis = redis_client.connect(s.redis_url)
    try:
        with procs.consumer(s, ctx.workdir, "persist") as child:
            for stream in keys.ingests:
                await _group_ready(redis, stream)
            await anyio.sleep(0.3)
            os.kill(child.pid, signal.SIGSTOP)
            try:
                last_ids: dict[str, bytes] = {}
                for start in range(0, len(triples), 1000):
                    pipe = redis.pipeline(transaction=False)
                    part = triples[start : start + 1000]
                    for entry in part:
                        pipe.xadd(keys.ingest_of(entry.user), entry.fields())
                    for entry, sid in zip(part, await pipe.execute(), strict=True):
                        last_ids[keys.ingest_of(entry.user)] = sid
                # The profiler attaches (0.3 s) while the consumer is still frozen: that
                # time must not be a head start outside the clock.
                with procs.profiled(child.pid, ctx.profile_dir,
                                    f"persist-consumer-{s.batch_size}"):
                    os.kill(child.pid, signal.SIGCONT)
                    with Timer() as t:
                        deadline = time.monotonic() + 120
                        while not await _drained(redis, last_ids):
                            if not child.alive():
                                raise RuntimeError(f"persist consumer died:\n{child.tail()}")
                            if time.monotonic() > deadline:
                                raise RuntimeError("persist consumer did not drain its backlog")
                            await anyio.sleep(0.005)
            finally:
                os.kill(child.pid, signal.SIGCONT)
    finally:
        await redis.aclose()
    return len(triples) / t.seconds


async def run(ctx: Context, result: BenchResult) -> None:
    n = ctx.size(2_000, 20_000)
    n_naive = ctx.size(300, 3_000)
    # A backlog's last batch is partial (its entries spread over the partitions): with the
    # default LIVEFEED_FLUSH_MS it would wait 500 ms for entries that never come, which is
    # the linger policy, not throughput. The raw baselines do not wait either.
    async with ctx.namespace(flush_ms=1) as s:
        evs = data.events(n, [f"user{i}" for i in range(100)], seed=3)
        rows = [newsletters.row(e, f"{1700000000000 + i}-0") for i, e in enumerate(evs)]
        conn = await asyncpg.connect(s.database_url)
        try:
            naive = await _naive(conn, rows[:n_naive])
            await conn.execute("TRUNCATE newsletters")
            ceiling = await _ceiling(conn, rows, s.batch_size)
            await conn.execute("TRUNCATE newsletters")
            consumer = await _consumer_rate(ctx, s, data.triples(evs))
            stored = await conn.fetchval("SELECT count(*) FROM newsletters")
            big = big_ceiling = None
            if not ctx.quick:
                await conn.execute("TRUNCATE newsletters")
                big_ceiling = await _ceiling(conn, rows, BIG_BATCH)
                await conn.execute("TRUNCATE newsletters")
                async with ctx.namespace(batch_size=BIG_BATCH, flush_ms=1) as s2:
                    big = await _consumer_rate(ctx, s2, data.triples(evs))
        finally:
            await conn.close()
        if stored != n:
            raise RuntimeError(f"persist wrote {stored} rows for {n} entries")

    result.rows += [
        row("persist consumer", consumer, "rows/s", "one INSERT per event", naive,
            Goal("ratio", ">=", 25)),
        row("persist consumer", consumer, "rows/s", f"raw UNNEST x{s.batch_size}, no Redis",
            ceiling, Goal("ratio", ">=", 0.6)),
        row(f"raw UNNEST x{s.batch_size}", ceiling, "rows/s", "one INSERT per event", naive),
    ]
    if big is not None and big_ceiling is not None:
        result.rows += [
            row(f"persist consumer, batch {BIG_BATCH}", big, "rows/s", "one INSERT per event",
                naive, Goal("ratio", ">=", 25)),
            row(f"persist consumer, batch {BIG_BATCH}", big, "rows/s",
                f"raw UNNEST x{BIG_BATCH}, no Redis", big_ceiling, Goal("ratio", ">=", 0.6)),
        ]
    ctx.note(f"{n} events (naive: first {n_naive}) over {s.partitions} partitions; "
             f"LIVEFEED_BATCH_SIZE {s.batch_size} (and {BIG_BATCH} in a second run, full mode "
             "only), LIVEFEED_FLUSH_MS 1 (the last, partial batch does not linger); the "
             "consumer is its own process "
             "draining a backlog written while it was stopped (SIGSTOP); Postgres and Redis "
             "share the 2 cores with it")

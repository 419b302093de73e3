"""`persist`: rows/s of the persist consumer vs one INSERT per event and vs raw UNNEST.

The consumer runs as a real `livefeed consumer persist` process, idle on an empty
stream; the clock starts when the burst of entries is written to the ingest stream and
stops when every row is in Postgres and every entry is acked. So it covers the Redis
read, decode, batched insert and ack, as in production.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import asyncpg
from redis.exceptions import ResponseError

from core import redis_client
from core.keys import PERSIST_GROUP, Keys
from ops.bench import data, procs
from ops.bench.runner import BenchResult, Context, Goal, Timer, row


async def _naive(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> float:
    with Timer() as t:
        for r in rows:
            await conn.execute(data.INSERT_ONE, *r)
    return len(rows) / t.seconds


async def _ceiling(conn: asyncpg.Connection, rows: list[tuple[Any, ...]], batch: int) -> float:
    with Timer() as t:
        for start in range(0, len(rows), batch):
            await conn.execute(data.INSERT_UNNEST, *data.columns(rows[start : start + batch]))
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


async def _pending(redis: Any, stream: str) -> int:
    info = await redis.xpending(stream, PERSIST_GROUP)
    return int(info["pending"])


async def _consumer_rate(ctx: Context, s: Any, conn: asyncpg.Connection,
                         triples: list[tuple[str, str, bytes]]) -> float:
    keys = Keys(s.prefix)
    redis = redis_client.connect(s.redis_url)
    try:
        with procs.consumer(s, ctx.workdir, "persist") as child:
            await _group_ready(redis, keys.ingest)
            await anyio.sleep(0.3)
            with procs.profiled(child.pid, ctx.profile_dir, "persist-consumer"), Timer() as t:
                for start in range(0, len(triples), 1000):
                    pipe = redis.pipeline(transaction=False)
                    for eid, user, payload in triples[start : start + 1000]:
                        pipe.xadd(keys.ingest, {"event_id": eid, "user": user, "data": payload})
                    await pipe.execute()
                deadline = time.monotonic() + 120
                while True:
                    count = await conn.fetchval("SELECT count(*) FROM newsletters")
                    if count >= len(triples) and await _pending(redis, keys.ingest) == 0:
                        break
                    if not child.alive():
                        raise RuntimeError(f"persist consumer died:\n{child.tail()}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"persist consumer stuck at {count} rows")
                    await anyio.sleep(0.01)
    finally:
        await redis.aclose()
    return len(triples) / t.seconds


async def run(ctx: Context, result: BenchResult) -> None:
    n = ctx.size(2_000, 20_000)
    n_naive = ctx.size(300, 3_000)
    async with ctx.namespace() as s:
        assert s.database_url
        evs = data.events(n, [f"user{i}" for i in range(100)], seed=3)
        rows = [data.row_of(e, f"{1700000000000 + i}-0") for i, e in enumerate(evs)]
        conn = await asyncpg.connect(s.database_url)
        try:
            naive = await _naive(conn, rows[:n_naive])
            await conn.execute("TRUNCATE newsletters")
            ceiling = await _ceiling(conn, rows, s.batch_size)
            await conn.execute("TRUNCATE newsletters")
            consumer = await _consumer_rate(ctx, s, conn, data.triples(evs))
            stored = await conn.fetchval("SELECT count(*) FROM newsletters")
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
    ctx.note(f"{n} events (naive: first {n_naive}); batch size {s.batch_size}; the consumer "
             "is its own process, Postgres and Redis share the 2 cores with it and the bench")

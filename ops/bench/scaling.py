"""`scaling`: ingest -> persist -> fanout throughput on one Redis node versus a Redis Cluster
of three primaries, and with one versus two consumers per group, in one run.

Each configuration gets the same events (the same users, so every partition is used),
posted in batches over keep-alive connections to one gateway process; the figure is events
per second from the first POST until every row is in PostgreSQL and every event is in its
user's feed stream. Beside it: each Redis primary's CPU seconds over the run (`INFO cpu`,
what the server itself counts), which shows the load spreading even where the 2 cores of
this machine keep the throughput ratio modest. The cluster is an embedded one started for
the run (no replicas, no persistence: the figure is about spreading, not durability).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import msgspec
import redis as sync_redis

from livefeed.core import auth, leases, redis_client
from livefeed.core.embedded_cluster import EmbeddedCluster
from livefeed.core.keys import Keys
from livefeed.core.settings import Resolved
from livefeed.ops.bench import data, httpload, procs
from livefeed.ops.bench.runner import BenchResult, Context, row

BATCH = 100
CONCURRENCY = 8
USERS = 200
SETTLE_TIMEOUT_S = 180.0


class Outcome(msgspec.Struct, frozen=True):
    events_per_s: float
    cpu_s: dict[str, float]  # per Redis primary ("host:port"): CPU seconds over the run
    statuses: dict[int, int]


def _cpu_seconds(nodes: list[tuple[str, int]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for host, port in nodes:
        client = sync_redis.Redis(host=host, port=port, socket_timeout=5)
        try:
            info = client.info("cpu")
        finally:
            client.close()
        out[f"{host}:{port}"] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return out


def _requests(secret: str, users: list[str], count: int) -> list[bytes]:
    evs = data.events(count, users, seed=count)
    out = []
    for start in range(0, count, BATCH):
        body = msgspec.json.encode(evs[start : start + BATCH])
        out.append(httpload.post_request("/v1/events", body,
                                         auth.signature_headers(secret, body)))
    return out


async def _settled(s: Resolved, users: list[str], count: int) -> bool:
    """Every row stored and every event in its user's feed."""
    conn = await asyncpg.connect(s.database_url, timeout=10)
    try:
        rows = int(await conn.fetchval("SELECT count(*) FROM newsletters"))
    finally:
        await conn.close()
    if rows < count:
        return False
    keys = Keys(s.prefix, partitions=s.partitions)
    client: Any = redis_client.connect(s.redis_url, cluster=s.redis_cluster)
    try:
        pipe = client.pipeline(transaction=False)
        for user in users:
            pipe.xlen(keys.feed(user))
        fed = sum(int(n) for n in await pipe.execute())
    finally:
        await client.aclose()
    return fed >= count


async def _throughput(ctx: Context, s: Resolved, nodes: list[tuple[str, int]],
                      consumers: int, count: int, label: str) -> Outcome:
    assert s.webhook_secret
    users = [f"scale{i}" for i in range(USERS)]
    requests = _requests(s.webhook_secret, users, count)
    with contextlib.ExitStack() as stack:
        for group in ("persist", "fanout"):
            for i in range(consumers):
                stack.enter_context(procs.consumer(s, ctx.workdir, group,
                                                   name=f"{label}-{group}-{i}"))
        _, port = stack.enter_context(procs.gateway(s, ctx.workdir, f"scaling-{label}"))
        await _leases_settled(s, consumers)
        before = _cpu_seconds(nodes)
        started = time.perf_counter()
        statuses = await httpload.send_all(port, requests, CONCURRENCY)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not await _settled(s, users, count):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: not settled after {SETTLE_TIMEOUT_S:.0f}s")
            await anyio.sleep(0.05)
        seconds = time.perf_counter() - started
        after = _cpu_seconds(nodes)
    return Outcome(events_per_s=count / seconds, statuses=statuses,
                   cpu_s={n: round(after[n] - before[n], 2) for n in after})


async def _leases_settled(s: Resolved, consumers: int, timeout: float = 30.0) -> None:
    """Wait until every partition of both groups is leased, by `consumers` holders each (a
    rebalance during the run would be measured as slowness)."""
    keys = Keys(s.prefix, partitions=s.partitions)
    client: Any = redis_client.connect(s.redis_url, cluster=s.redis_cluster)
    deadline = time.monotonic() + timeout
    try:
        while True:
            held = [await leases.owners(client, keys, group) for group in ("persist", "fanout")]
            if all(len(h) == keys.count and len({tok for tok, _ in h.values()}) == consumers
                   for h in held):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"partitions not shared by {consumers} consumers per group "
                                   f"after {timeout:.0f}s")
            await anyio.sleep(0.1)
    finally:
        await client.aclose()


def _node_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


async def run(ctx: Context, result: BenchResult) -> None:
    if ctx.settings.redis_cluster:
        ctx.note("scaling: skipped, the run's Redis is already a cluster (its one-node "
                 "baseline needs a standalone server)")
        return
    count = ctx.size(2_000, 60_000)
    outcomes: dict[str, Outcome] = {}
    async with ctx.namespace() as s:
        outcomes["1 node, 1 consumer"] = await _throughput(
            ctx, s, [_node_of(s.redis_url)], 1, count, "one")
    with tempfile.TemporaryDirectory(prefix="livefeed-bench-cluster-") as d, \
            EmbeddedCluster(Path(d), primaries=3, replicas_per_primary=0,
                            persist=False) as cluster:
        nodes = [(n.host, n.port) for n in cluster.primary_nodes()]
        for consumers in (1, 2):
            async with ctx.namespace(redis_url=cluster.cluster_url, cluster=True) as s:
                outcomes[f"3 nodes, {consumers} consumer{'s' * (consumers > 1)}"] = (
                    await _throughput(ctx, s, nodes, consumers, count, f"c{consumers}"))
    one, three, two = (outcomes["1 node, 1 consumer"], outcomes["3 nodes, 1 consumer"],
                       outcomes["3 nodes, 2 consumers"])
    result.rows += [
        row("3 nodes, 1 consumer per group", three.events_per_s, "events/s",
            "1 node, 1 consumer per group", one.events_per_s),
        row("3 nodes, 2 consumers per group", two.events_per_s, "events/s",
            "3 nodes, 1 consumer per group", three.events_per_s),
    ]
    for name, outcome in outcomes.items():
        cpu = ", ".join(f"{node} {sec:.2f}s" for node, sec in outcome.cpu_s.items())
        bad = {k: v for k, v in outcome.statuses.items() if k != 202}
        ctx.note(f"{name}: {outcome.events_per_s:,.0f} events/s; Redis CPU per primary: {cpu}"
                 + (f"; non-202 answers {bad}" if bad else ""))
    ctx.note(f"{count:,} events to {USERS} users (every partition), {BATCH} per POST over "
             f"{CONCURRENCY} keep-alive connections, one gateway; figure = events/s from the "
             "first POST until every row is stored and every event is in its feed. Gateway, "
             "consumers, every Redis node, PostgreSQL and the sender share the 2 cores, so the "
             "throughput ratio stays modest: the per-node CPU shows the load spreading")

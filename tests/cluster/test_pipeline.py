"""livefeed on a real Redis Cluster, end to end with real processes: events posted over
HTTP reach PostgreSQL and every follower's WebSocket exactly once, in each user's order,
while consumers and gateways are SIGKILLed, and while a primary dies (its replica takes
over) with ingest acknowledging only replicated appends."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from livefeed.core import redis_client
from livefeed.core.embedded_cluster import EmbeddedCluster
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.leases import owners
from livefeed.core.settings import Settings
from tests.gateway.livehelp import SECRET
from tests.helpers.pipeline import (
    Deployment,
    Follower,
    Poster,
    events_of,
    exactly_once_in_order,
)
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

USERS = [f"user{i}" for i in range(12)]


def cluster_settings(settings_factory: Callable[..., Settings], url: str,
                     **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(redis_url=url, redis_cluster=True, secret=SECRET,
                                lease_ms=2000, claim_idle_ms=3000, flush_ms=50)
    return settings_factory(**{**base, **overrides})


async def settled(client: Any, keys: Keys, pool: asyncpg.Pool, poster: Poster,
                  followers: list[Follower]) -> bool:
    rows = await pool.fetchval("SELECT count(*) FROM newsletters")
    if rows < len(poster.accepted):
        return False
    for f in followers:
        if len(set(f.received)) < sum(1 for _ in owed(poster, f.user)):
            return False
    for stream in keys.ingests:
        if not await client.exists(stream):
            continue
        for group in (PERSIST_GROUP, FANOUT_GROUP):
            if int((await client.xpending(stream, group))["pending"]):
                return False
    return True


async def consumers_own_everything(client: Any, keys: Keys) -> bool:
    for group in (PERSIST_GROUP, FANOUT_GROUP):
        if len(await owners(client, keys, group)) < keys.count:
            return False
    return True


def owed(poster: Poster, user: str) -> list[str]:
    return [i for i, u in poster.users.items() if u == user]


async def check_exact(client: Any, keys: Keys, pool: asyncpg.Pool, poster: Poster,
                      followers: list[Follower]) -> None:
    stored = [str(r["id"]) for r in await pool.fetch("SELECT id FROM newsletters")]
    assert sorted(stored) == sorted(poster.accepted), "rows missing or doubled"
    for f in followers:
        want = owed(poster, f.user)
        assert exactly_once_in_order(f.received, want) is None, (
            f.user, exactly_once_in_order(f.received, want))
        feed = [json.loads(fields[b"data"])["id"]
                for _, fields in await client.xrange(keys.feed(f.user))]
        assert exactly_once_in_order(feed, want) is None, (
            f.user, "feed", exactly_once_in_order(feed, want))
        assert f.resets == []


class Load:
    """Posts `rounds` requests, each one event for every user (so every request spans
    several partitions and nodes), and runs a follower per user meanwhile."""

    def __init__(self, dep: Deployment) -> None:
        self.poster = Poster(dep.settings, dep.live_urls)
        self.followers = [Follower(u, dep.live_urls) for u in USERS]

    async def post_rounds(self, http: httpx.AsyncClient, start: int, rounds: int) -> None:
        for n in range(start, start + rounds):
            await self.poster.post(http, [e for u in USERS for e in events_of(u, n, 1)])
            await anyio.sleep(0.01)


async def test_kills_of_consumers_and_a_gateway_lose_nothing_on_a_cluster(
        settings_factory: Callable[..., Settings], redis_cluster_url: str,
        redis_cluster: Any, keys: Keys, pool: asyncpg.Pool, tmp_path: Path) -> None:
    settings = cluster_settings(settings_factory, redis_cluster_url)
    with Deployment(settings, tmp_path / "logs") as dep:
        first, _second = dep.gateway(), dep.gateway()
        for role in ("persist", "fanout"):
            dep.consumer(role, f"{role}-a")
            dep.consumer(role, f"{role}-b")
        load = Load(dep)
        async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=10) as http:
            for f in load.followers:
                tg.start_soon(f.run)
            with anyio.fail_after(60):
                for f in load.followers:
                    await f.ready.wait()
            await load.post_rounds(http, 0, 20)
            # Mid-run: a consumer of each group and the first gateway die without a word.
            dep.consumers["persist-a"].kill()
            dep.consumers["fanout-a"].kill()
            dep.gateways[first].kill()
            await load.post_rounds(http, 20, 20)
            await eventually(lambda: settled(redis_cluster, keys, pool, load.poster,
                                             load.followers),
                             what="every event stored and delivered", timeout=90,
                             interval=0.2)
            tg.cancel_scope.cancel()
        await check_exact(redis_cluster, keys, pool, load.poster, load.followers)
        assert len(load.poster.accepted) == 40 * len(USERS)
        assert sum(f.reconnects for f in load.followers) >= 1


@pytest.mark.timeout(300)
async def test_a_primary_killed_under_load_loses_no_acknowledged_event(
        settings_factory: Callable[..., Settings], cluster_factory: Callable[..., EmbeddedCluster],
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    cluster = cluster_factory()
    settings = cluster_settings(settings_factory, cluster.cluster_url, ingest_replicas=1,
                                lease_ms=6000)
    keys = Keys(settings.prefix, partitions=settings.partitions)
    client = redis_client.connect(cluster.cluster_url, cluster=True)
    try:
        await client.initialize()
        victim = cluster.owner(keys.ingest_of(USERS[0]))
        on_victim = [u for u in USERS if cluster.owner(keys.ingest_of(u)) is victim]
        with Deployment(settings, tmp_path / "logs") as dep:
            dep.gateway()
            dep.gateway()
            dep.consumer("persist", "persist-a")
            dep.consumer("fanout", "fanout-a")
            await eventually(lambda: consumers_own_everything(client, keys),
                             what="both consumers holding their partitions", timeout=60,
                             procs=tuple(dep.consumers.values()))
            load = Load(dep)
            async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=10) as http:
                for f in load.followers:
                    tg.start_soon(f.run)
                with anyio.fail_after(60):
                    for f in load.followers:
                        await f.ready.wait()
                await load.post_rounds(http, 0, 15)
                victim.signal(signal.SIGKILL)
                # Until the replica takes over, that shard's appends fail: 503, retried.
                # After it, they still cannot reach a replica (the shard has none left):
                # 503 again, until the old primary is back as the new one's replica.
                async with anyio.create_task_group() as posting:
                    posting.start_soon(load.post_rounds, http, 15, 15)
                    await anyio.to_thread.run_sync(cluster.wait_for_failover, victim)
                    await anyio.to_thread.run_sync(cluster.restart, victim)
                await load.post_rounds(http, 30, 10)
                await client.nodes_manager.initialize()
                await eventually(lambda: settled(client, keys, pool, load.poster,
                                                 load.followers),
                                 what="every acknowledged event stored and delivered",
                                 timeout=120, interval=0.2)
                tg.cancel_scope.cancel()
            await check_exact(client, keys, pool, load.poster, load.followers)
            assert len(load.poster.accepted) == 40 * len(USERS)
            assert on_victim, "some users live on the killed primary"
            assert load.poster.retries >= 1, "the outage was seen (503s answered)"
    finally:
        await client.aclose()

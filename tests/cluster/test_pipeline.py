"""livefeed on a real Redis Cluster, end to end with real processes: events posted over
HTTP reach PostgreSQL and every follower's WebSocket exactly once, in each user's order,
while consumers and gateways are SIGKILLed, and while a primary dies (its replica takes
over) with ingest acknowledging only replicated appends."""

from __future__ import annotations

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
from livefeed.core.keys import Keys
from livefeed.core.settings import Settings
from tests.gateway.livehelp import SECRET
from tests.helpers.pipeline import (
    Deployment,
    Load,
    check_exact,
    consumers_own_everything,
    settled,
)
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

USERS = [f"user{i}" for i in range(12)]


def cluster_settings(settings_factory: Callable[..., Settings], url: str,
                     **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(redis_url=url, redis_cluster=True, secret=SECRET,
                                lease_ms=2000, claim_idle_ms=3000, flush_ms=50)
    return settings_factory(**{**base, **overrides})


async def test_kills_of_consumers_and_a_gateway_lose_nothing_on_a_cluster(
        settings_factory: Callable[..., Settings], redis_cluster_url: str,
        redis_cluster: Any, keys: Keys, pool: asyncpg.Pool, tmp_path: Path) -> None:
    settings = cluster_settings(settings_factory, redis_cluster_url)
    with Deployment(settings, tmp_path / "logs") as dep:
        first, _second = dep.gateway(), dep.gateway()
        for role in ("persist", "fanout"):
            dep.consumer(role, f"{role}-a")
            dep.consumer(role, f"{role}-b")
        load = Load(dep, USERS)
        async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=10) as http:
            await load.follow(tg, timeout=60)
            await load.post_rounds(http, 0, 20)
            # Mid-run: a consumer of each group and the first gateway die without a word.
            dep.consumers["persist-a"].kill()
            dep.consumers["fanout-a"].kill()
            dep.gateways[first].kill()
            await load.post_rounds(http, 20, 20)
            await eventually(lambda: settled(redis_cluster, keys, pool, load),
                             what="every event stored and delivered", timeout=90,
                             interval=0.2)
            tg.cancel_scope.cancel()
        await check_exact(redis_cluster, keys, pool, load)
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
            load = Load(dep, USERS)
            async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=10) as http:
                await load.follow(tg, timeout=60)
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
                await eventually(lambda: settled(client, keys, pool, load),
                                 what="every acknowledged event stored and delivered",
                                 timeout=120, interval=0.2)
                tg.cancel_scope.cancel()
            await check_exact(client, keys, pool, load)
            assert len(load.poster.accepted) == 40 * len(USERS)
            assert on_victim, "some users live on the killed primary"
            assert load.poster.retries >= 1, "the outage was seen (503s answered)"
    finally:
        await client.aclose()

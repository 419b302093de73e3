"""`gateway.presence.Presence` against the test Redis (standalone) and the test cluster:
the limit is taken atomically, expired entries stop counting, renewal re-enters what Redis
lost, and not what ended."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from livefeed.core.keys import Keys
from livefeed.gateway.presence import Presence

pytestmark = pytest.mark.anyio


async def test_the_limit_is_taken_atomically_across_gateways(redis: Any, keys: Keys) -> None:
    a, b = (Presence(redis, keys, ttl_s=30, name=n) for n in ("gw-a", "gw-b"))
    results: list[str | None] = []

    async def join(p: Presence) -> None:
        results.append(await p.join("alice", limit=5))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(join, (a, b)[i % 2])
    assert len([r for r in results if r is not None]) == 5
    view = await a.of("alice")
    assert view.connections == 5
    assert set(view.gateways) <= {"gw-a", "gw-b"}
    # The refused ones left nothing behind, locally or in Redis.
    assert sum(len(m) for p in (a, b) for m in p.local.values()) == 5
    assert await redis.zcard(keys.presence("alice")) == 5
    assert await redis.ttl(keys.presence("alice")) > 0


async def test_expired_entries_stop_counting_and_make_room(redis: Any, keys: Keys) -> None:
    dead = Presence(redis, keys, ttl_s=0.2, name="gw-dead")
    assert await dead.join("bob", limit=2) is not None
    assert await dead.join("bob", limit=2) is not None
    live = Presence(redis, keys, ttl_s=30, name="gw-live")
    assert await live.join("bob", limit=2) is None  # both places taken
    await anyio.sleep(0.3)  # `dead` never renews: its entries expire
    assert (await live.of("bob")).connections == 0
    assert await live.join("bob", limit=2) is not None


async def test_renewal_reenters_lost_entries_and_not_ended_ones(redis: Any, keys: Keys) -> None:
    p = Presence(redis, keys, ttl_s=30, name="gw")
    first = await p.join("carol", limit=0)
    second = await p.join("carol", limit=0)
    assert first and second
    await redis.delete(keys.presence("carol"))  # Redis lost it (a restart without data)
    await p.renew()
    assert (await p.of("carol")).connections == 2
    await p.leave("carol", first)
    await p.renew()
    assert (await p.of("carol")).connections == 1


async def test_presence_on_a_cluster(redis_cluster: Any, keys: Keys) -> None:
    p = Presence(redis_cluster, keys, ttl_s=30, name="gw")
    members = [await p.join(user, limit=1) for user in ("u1", "u2", "u3")]
    assert all(members)
    assert await p.join("u1", limit=1) is None
    await p.renew()
    assert [(await p.of(u)).connections for u in ("u1", "u2", "u3")] == [1, 1, 1]
    await p.clear()
    assert [(await p.of(u)).connections for u in ("u1", "u2", "u3")] == [0, 0, 0]


async def test_refused_joins_leave_nothing_behind_while_renewals_run(
        redis: Any, keys: Keys) -> None:
    """A renewal running while joins are being refused must not write their entries
    (found by measurement: one token's 4,000 attempts left 39 entries for a limit of 32)."""
    p = Presence(redis, keys, ttl_s=30, name="gw")
    assert await p.join("dave", limit=2) and await p.join("dave", limit=2)
    refused: list[str | None] = []

    async def join() -> None:
        refused.append(await p.join("dave", limit=2))

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(join)
            tg.start_soon(p.renew)
    assert refused == [None] * 100
    assert (await p.of("dave")).connections == 2
    assert await redis.zcard(keys.presence("dave")) == 2

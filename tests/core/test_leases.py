"""Partition leases on the real Redis: assignment, rebalance, fencing, expiry."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from livefeed.core.keys import Keys
from livefeed.core.leases import PartitionLeases, assign, owners


def test_assignment_is_the_same_for_every_member_and_covers_all() -> None:
    members = ["c#1", "a#2", "b#3"]
    shares = [assign(16, members, m) for m in members]
    assert set().union(*shares) == set(range(16))
    assert sum(len(s) for s in shares) == 16 and {len(s) for s in shares} == {5, 6}
    assert assign(16, members, "z#9") == set()


async def test_two_members_split_then_one_takes_all_after_the_other_leaves(
        redis: Any, keys: Keys) -> None:
    a = PartitionLeases(redis, keys, "persist", "a", lease_ms=3000)
    first = await a.refresh()
    assert first.owned == first.gained == set(range(16))
    b = PartitionLeases(redis, keys, "persist", "b", lease_ms=3000)
    joined = await b.refresh()
    assert joined.owned == set()  # a still holds them all
    moved = await a.refresh()
    assert len(moved.surplus) == 8 and moved.owned == set(range(16))
    await a.release(sorted(moved.surplus))
    taken = await b.refresh()
    assert taken.gained == moved.surplus and a.owned.isdisjoint(b.owned)
    assert a.owned | b.owned == set(range(16))
    held = await owners(redis, keys, "persist")
    assert {p for p, (tok, _) in held.items() if tok == b.token} == b.owned
    await b.leave()
    back = await a.refresh()
    assert back.gained == taken.gained and back.owned == set(range(16))


async def test_a_dead_members_leases_expire_and_are_taken(redis: Any, keys: Keys) -> None:
    dead = PartitionLeases(redis, keys, "fanout", "dead", lease_ms=300)
    await dead.refresh()
    live = PartitionLeases(redis, keys, "fanout", "live", lease_ms=300)
    assert (await live.refresh()).owned == set()
    await anyio.sleep(0.4)  # `dead` neither heartbeats nor renews
    result = await live.refresh()
    assert result.owned == set(range(16)) and result.gained == set(range(16))
    # The old holder learns it lost them and may not renew or release them any more.
    stale = await dead.refresh()
    assert stale.lost == set(range(16)) and stale.owned == set()
    await dead.release(list(range(16)))
    assert len(await owners(redis, keys, "fanout")) == 16


async def test_static_assignment(redis: Any, keys: Keys) -> None:
    s = PartitionLeases(redis, keys, "persist", "s", static=[1, 3])
    assert (await s.refresh()).owned == {1, 3}
    with pytest.raises(ValueError, match="out of range"):
        PartitionLeases(redis, keys, "persist", "s", static=[16])


async def test_groups_are_independent(redis: Any, keys: Keys) -> None:
    p = PartitionLeases(redis, keys, "persist", "x")
    f = PartitionLeases(redis, keys, "fanout", "y")
    assert (await p.refresh()).owned == (await f.refresh()).owned == set(range(16))


async def test_a_restarted_consumer_takes_over_its_earlier_process_at_once(
        redis: Any, keys: Keys) -> None:
    before = PartitionLeases(redis, keys, "persist", "c1", lease_ms=60_000)
    other = PartitionLeases(redis, keys, "persist", "c2", lease_ms=60_000)
    await other.refresh()
    first = await before.refresh()
    assert first.owned == set()  # c2 holds every lease: wait for c2 to give some up
    assert len((await other.refresh()).surplus) == 8
    await other.release(sorted(other.owned - assign(16, [other.token, before.token], other.token)))
    held = (await before.refresh()).owned
    assert len(held) == 8
    # c1 crashes (no leave) and comes back under its name, long before its leases expire.
    after = PartitionLeases(redis, keys, "persist", "c1", lease_ms=60_000)
    back = await after.refresh()
    assert back.owned == back.gained == held
    assert sorted(back.members) == sorted([other.token, after.token])  # no ghost member
    # The earlier process, were it alive, learns it lost them and cannot renew them.
    stale = await before.refresh()
    assert stale.lost == held and stale.owned == set()
    # Another name never takes what is not its own.
    stranger = PartitionLeases(redis, keys, "persist", "c", lease_ms=60_000)
    assert (await stranger.refresh()).gained == set()
    assert {p for p, (tok, _) in (await owners(redis, keys, "persist")).items()
            if tok == after.token} == held

"""Partition ownership for the consumers of one group: renewable, fenced leases.

Every consumer process of a group is a member: it heartbeats into the group's member set
(a sorted set scored by the last heartbeat). All members compute the same assignment from
the live members (partition p goes to the (p mod M)-th member in sorted order), or take a
static list (`livefeed consumer --own-partitions`). A member owns a partition while it
holds its lease, a key in the partition's own slot set with `SET NX PX` to the member's
token; only the holder may
extend it (compare-and-extend script) or delete it. A member gives a partition up when the
assignment moves it elsewhere, after finishing the batch in hand; a dead member's leases
simply expire. Whoever takes a partition over first finishes what the previous owner left
pending (the runner claims the partition's pending entries before reading new ones).

Rebalancing therefore takes one refresh interval after a join or a clean leave, and about
one lease time after a crash. A consumer restarted under its old name (consumer names are
unique within a group: they name its pending entries too) does not wait that lease time:
on its first refresh it takes over the leases and the member entry of its earlier process
at once, and that process, if it were still alive, finds its leases lost on its next renew.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from livefeed.core.keys import Keys

logger = logging.getLogger(__name__)

# KEYS[1]: lease.  ARGV: token, ttl ms.  1 if still ours (and extended), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1]: lease.  ARGV: holder prefix ("<name>#"), token, ttl ms.  1 if the lease was held
# by an earlier process of the same consumer name and is ours now, else 0.
_RECLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, 1, string.len(ARGV[1])) == ARGV[1] and holder ~= ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1]: lease.  ARGV: token.  1 if it was ours and is deleted, else 0.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def assign(partitions: int, members: Sequence[str], member: str) -> set[int]:
    """The partitions `member` should own among `members` (every member computes the same)."""
    ordered = sorted(set(members))
    if member not in ordered:
        return set()
    me = ordered.index(member)
    return {p for p in range(partitions) if p % len(ordered) == me}


@dataclass
class Refresh:
    owned: set[int]  # leases held after this refresh
    gained: set[int]  # newly taken: claim the previous owner's pending entries first
    lost: set[int]  # held before, gone now (expired or taken): stop working on them
    surplus: set[int]  # held but assigned elsewhere: release after the batch in hand
    members: list[str] = field(default_factory=list)


class PartitionLeases:
    """The leases one consumer (`name`) of `group` holds on `keys`' partitions."""

    def __init__(self, redis: Any, keys: Keys, group: str, name: str, *,
                 lease_ms: int = 6000, static: Sequence[int] | None = None) -> None:
        if static is not None:
            bad = [p for p in static if not 0 <= p < keys.partitions.count]
            if bad:
                raise ValueError(f"partitions {bad} out of range 0..{keys.partitions.count - 1}")
        self.redis = redis
        self.keys = keys
        self.group = group
        # Unique per process: a restarted consumer with the same name is a new holder.
        self.name = name
        self.token = f"{name}#{secrets.token_hex(4)}"
        self._reclaimed = False
        self.lease_ms = lease_ms
        self.static = None if static is None else sorted(set(static))
        self.owned: set[int] = set()
        self.acquired_at: dict[int, float] = {}

    @property
    def refresh_every_s(self) -> float:
        return max(self.lease_ms / 6000, 0.05)

    async def _script(self, source: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """EVALSHA per call, side by side (a cluster client refuses scripts in pipelines)."""
        if not calls:
            return []
        sha = _sha(source)
        try:
            return await self._each(sha, calls)
        except NoScriptError:
            await self.redis.script_load(source)  # a cluster client loads it on every primary
            return await self._each(sha, calls)

    async def _each(self, sha: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        return list(await asyncio.gather(*(self.redis.evalsha(sha, 1, key, *args)
                                           for key, args in calls)))

    async def members(self) -> list[str]:
        now = int(time.time() * 1000)
        key = self.keys.members(self.group)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {self.token: now})
        pipe.zremrangebyscore(key, "-inf", now - self.lease_ms)
        pipe.pexpire(key, self.lease_ms * 10)
        pipe.zrange(key, 0, -1)
        *_, names = await pipe.execute()
        return [n.decode() if isinstance(n, bytes) else n for n in names]

    async def _reclaim(self) -> set[int]:
        """Take over what an earlier process of our name held: its member entry and leases."""
        prefix = f"{self.name}#"
        key = self.keys.members(self.group)
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in await self.redis.zrange(key, 0, -1)]
        ghosts = [n for n in names if n.startswith(prefix) and n != self.token]
        if ghosts:
            await self.redis.zrem(key, *ghosts)
        count = self.keys.partitions.count
        taken = await self._script(
            _RECLAIM, [(self.keys.lease(p, self.group), [prefix, self.token, self.lease_ms])
                       for p in range(count)])
        reclaimed = {p for p, ok in zip(range(count), taken, strict=True) if ok}
        if reclaimed:
            logger.info("group %s: took over %d leases of an earlier %s", self.group,
                        len(reclaimed), self.name)
        return reclaimed

    async def refresh(self) -> Refresh:
        """Heartbeat, renew what we hold, take what is ours and free, report the rest."""
        reclaimed: set[int] = set()
        if not self._reclaimed:
            reclaimed = await self._reclaim()
            self._reclaimed = True
            self.owned |= reclaimed
        members = await self.members()
        wanted = (set(self.static) if self.static is not None
                  else assign(self.keys.partitions.count, members, self.token))
        held = sorted(self.owned)
        renewed = await self._script(
            _RENEW, [(self.keys.lease(p, self.group), [self.token, self.lease_ms]) for p in held])
        kept = {p for p, ok in zip(held, renewed, strict=True) if ok}
        lost = self.owned - kept - reclaimed
        free = sorted(wanted - kept)
        gained: set[int] = reclaimed & kept
        if free:
            pipe = self.redis.pipeline(transaction=False)
            for p in free:
                pipe.set(self.keys.lease(p, self.group), self.token, nx=True, px=self.lease_ms)
            gained |= {p for p, ok in zip(free, await pipe.execute(), strict=True) if ok}
        now = time.monotonic()
        for p in gained:
            self.acquired_at[p] = now
        for p in lost:
            self.acquired_at.pop(p, None)
            logger.warning("group %s: lease of partition %d lost", self.group, p)
        self.owned = kept | gained
        return Refresh(set(self.owned), gained, lost, self.owned - wanted, members)

    async def release(self, partitions: Sequence[int]) -> None:
        mine = [p for p in partitions if p in self.owned]
        await self._script(
            _RELEASE, [(self.keys.lease(p, self.group), [self.token]) for p in mine])
        for p in mine:
            self.owned.discard(p)
            self.acquired_at.pop(p, None)

    async def leave(self) -> None:
        """Release every lease and leave the member set (a clean stop)."""
        await self.release(sorted(self.owned))
        await self.redis.zrem(self.keys.members(self.group), self.token)


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


async def owners(redis: Any, keys: Keys, group: str) -> dict[int, tuple[str, int]]:
    """{partition: (holder token, remaining lease ms)} of `group` (operators' view)."""
    pipe = redis.pipeline(transaction=False)
    for p in range(keys.partitions.count):
        pipe.get(keys.lease(p, group))
        pipe.pttl(keys.lease(p, group))
    replies = await pipe.execute()
    out: dict[int, tuple[str, int]] = {}
    for p in range(keys.partitions.count):
        holder, ttl = replies[2 * p], replies[2 * p + 1]
        if holder is not None:
            out[p] = (holder.decode() if isinstance(holder, bytes) else holder, int(ttl))
    return out

"""Ingest retention against the real Redis: trim only what every group has acked."""

from __future__ import annotations

from typing import Any

from livefeed.core import retention
from livefeed.core.eventlog import parse_stream_id
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys


async def fill(redis: Any, keys: Keys, n: int) -> list[str]:
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(keys.ingest(0), {"event_id": f"e{i}", "user": "u", "data": b"{}"})
    return [i.decode() for i in await pipe.execute()]


async def deliver(redis: Any, keys: Keys, group: str, n: int, *, ack: int) -> list[str]:
    """Deliver `n` new entries to `group`, ack the first `ack` of them."""
    reply = await redis.xreadgroup(group, "c", {keys.ingest(0): ">"}, count=n)
    ids = [i.decode() for i, _ in reply[0][1]]
    if ack:
        await redis.xack(keys.ingest(0), group, *ids[:ack])
    return ids


async def test_creates_missing_groups_and_trims_nothing_unread(redis: Any, keys: Keys) -> None:
    await fill(redis, keys, 50)
    assert await retention.trim_acked(redis, keys, 0, approximate=False) == 0
    names = {g["name"] for g in await redis.xinfo_groups(keys.ingest(0))}
    assert names == {PERSIST_GROUP.encode(), FANOUT_GROUP.encode()}
    assert await redis.xlen(keys.ingest(0)) == 50


async def test_trims_below_the_oldest_entry_any_group_still_needs(redis: Any, keys: Keys) -> None:
    ids = await fill(redis, keys, 100)
    await retention.trim_acked(redis, keys, 0)  # creates both groups at 0
    await deliver(redis, keys, PERSIST_GROUP, 80, ack=80)  # persist: 0..79 acked
    fan = await deliver(redis, keys, FANOUT_GROUP, 60, ack=60)  # fanout: 0..59 acked,
    await redis.xack(keys.ingest(0), FANOUT_GROUP, *fan[:30])
    assert await retention.safe_minid(redis, keys, 0) == ids[59]  # last delivered to fanout
    removed = await retention.trim_acked(redis, keys, 0, approximate=False)
    assert removed == 59
    assert (await redis.xrange(keys.ingest(0), count=1))[0][0].decode() == ids[59]


async def test_a_pending_entry_holds_the_trim_back(redis: Any, keys: Keys) -> None:
    ids = await fill(redis, keys, 100)
    await retention.trim_acked(redis, keys, 0)
    await deliver(redis, keys, FANOUT_GROUP, 100, ack=100)
    # persist read 90, acked all but the 11th: that one is still being worked on
    got = await deliver(redis, keys, PERSIST_GROUP, 90, ack=0)
    await redis.xack(keys.ingest(0), PERSIST_GROUP, *(got[:10] + got[11:]))
    assert await retention.safe_minid(redis, keys, 0) == ids[10]
    assert await retention.trim_acked(redis, keys, 0, approximate=False) == 10
    first = await redis.xrange(keys.ingest(0), count=1)
    assert first[0][0].decode() == ids[10]
    # approximate trimming never goes past the safe id either
    await retention.trim_acked(redis, keys, 0)
    oldest = (await redis.xrange(keys.ingest(0), count=1))[0][0].decode()
    assert parse_stream_id(oldest) <= parse_stream_id(ids[10])  # type: ignore[operator]

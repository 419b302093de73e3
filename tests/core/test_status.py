"""Streams, groups, lag and feeds, on Redis 7 and on the embedded Redis 6.2."""

from __future__ import annotations

from typing import Any

import pytest

from livefeed.core import status as status_mod
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import DEFAULT_PARTITIONS, FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.leases import PartitionLeases
from livefeed.core.status import Status
from livefeed.schemas.event import encode_event
from tests.helpers.streams import both, event, groups, ingest, poisoned


@both
async def test_status_of_an_empty_prefix(r: Any, keys: Keys) -> None:
    status = await Status(r, keys).status()
    assert [(s.name, s.length, s.first_id) for s in status.streams] == [
        ("ingest", 0, None), ("dead", 0, None)]
    assert status.groups == [] and status.feeds == []


@both
async def test_status_counts_pending_lag_and_consumers(r: Any, keys: Keys) -> None:
    ids = await ingest(r, keys, 10)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "persist-1", {keys.ingest_of("alice"): ">"}, count=4)
    await r.xack(keys.ingest_of("alice"), PERSIST_GROUP, ids[0])

    status = await Status(r, keys).status()
    ingest_view = status.streams[0]
    # Totals name ids as refs: a stream id alone does not say which partition holds it.
    p = keys.partition_of("alice")
    ids = [f"{p}/{i}" for i in ids]
    assert (ingest_view.length, ingest_view.first_id, ingest_view.last_id) == (10, ids[0], ids[9])
    assert ingest_view.groups == 2
    by_name = {g.name: g for g in status.groups}
    persist, fanout = by_name[PERSIST_GROUP], by_name[FANOUT_GROUP]
    assert (persist.pending, persist.lag, persist.lag_exact) == (3, 6, True)
    assert persist.last_delivered_id == ids[3]
    assert [(c.name, c.pending) for c in persist.consumers] == [("persist-1", 3)]
    assert persist.oldest_pending_id == ids[1]
    assert persist.oldest_pending_age_ms is not None and persist.oldest_pending_age_ms >= 0
    assert persist.oldest_pending_idle_ms is not None
    assert (fanout.pending, fanout.lag, fanout.consumers) == (0, 10, [])
    assert fanout.oldest_pending_id is None


@both
async def test_status_per_partition(r: Any, keys: Keys) -> None:
    await ingest(r, keys, 4)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "p1", {keys.ingest_of("alice"): ">"}, count=1)
    await poisoned(r, keys)  # a dead letter in bob's partition
    mine, bobs = keys.partition_of("alice"), keys.partition_of("bob")
    assert mine != bobs
    # One partition only (without `static` p1 would take all 16): the lease must show on
    # that partition and no other.
    leases = PartitionLeases(r, keys, PERSIST_GROUP, "p1", static=[mine])
    assert (await leases.refresh()).owned == {mine}

    status = await Status(r, keys).status()
    assert len(status.partitions) == keys.count == DEFAULT_PARTITIONS == 16
    assert [(p.partition, p.tag) for p in status.partitions] == list(
        enumerate(keys.partitions.tags))
    assert [(p.ingest_length, p.dead_length) for p in status.partitions] == [
        (4 if p == mine else 0, 1 if p == bobs else 0) for p in range(16)]
    owners = {o.group: o for o in status.partitions[mine].owners}
    persist, fanout = owners[PERSIST_GROUP], owners[FANOUT_GROUP]
    assert persist.holder == leases.token and persist.holder.startswith("p1#")
    assert persist.lease_left_ms is not None and 0 < persist.lease_left_ms <= leases.lease_ms
    assert (persist.pending, persist.lag) == (1, 3)
    assert (fanout.holder, fanout.lease_left_ms, fanout.pending, fanout.lag) == (
        None, None, 0, 4)
    for p in status.partitions:
        if p.partition != mine:
            assert sorted((o.group, o.holder, o.pending, o.lag) for o in p.owners) == [
                (FANOUT_GROUP, None, 0, 0), (PERSIST_GROUP, None, 0, 0)], p


@both
async def test_lag_is_counted_after_deletions(r: Any, keys: Keys) -> None:
    # Redis 7 reports a nil lag when entries after the group's position were deleted;
    # Redis 6.2 never reports one. Both must come out as the entries left to deliver.
    ids = await ingest(r, keys, 10)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "p", {keys.ingest_of("alice"): ">"}, count=4)
    await r.xdel(keys.ingest_of("alice"), ids[6])
    persist = {g.name: g for g in await Status(r, keys).groups(
        keys.ingest_of("alice"))}[PERSIST_GROUP]
    assert (persist.lag, persist.lag_exact) == (5, True)


@both
async def test_lag_count_stops_at_the_cap(r: Any, keys: Keys,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_mod, "LAG_COUNT_CAP", 4)
    monkeypatch.setattr(status_mod, "_PAGE", 2)
    ids = await ingest(r, keys, 12)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "p", {keys.ingest_of("alice"): ">"}, count=2)
    await r.xdel(keys.ingest_of("alice"), ids[5])  # Redis 7 too must count: its lag is nil now
    persist = {g.name: g for g in await Status(r, keys).groups(
        keys.ingest_of("alice"))}[PERSIST_GROUP]
    assert persist.lag_exact is False
    assert persist.lag is not None and 4 <= persist.lag <= 9


@both
async def test_feed_sample(r: Any, keys: Keys) -> None:
    log = EventLog(r, keys, feed_maxlen=100, dedupe_ttl_s=60)
    evs = [event(f"user{i:02d}") for i in range(12)]
    await log.fan_out([(str(e.id), e.user_id, encode_event(e)) for e in evs])
    status = await Status(r, keys, feed_sample=10).status()
    feed_keys = {keys.feed(e.user_id) for e in evs}
    assert len(status.feeds) == 10 and status.feeds_more
    assert all(f.length == 1 and f.key in feed_keys for f in status.feeds)
    small = await Status(r, keys, feed_sample=20).status()
    assert len(small.feeds) == 12 and not small.feeds_more
    assert {f.key for f in small.feeds} == feed_keys



def test_totals_name_their_ids_with_the_partition() -> None:
    def view(first: str | None, last: str | None) -> status_mod.StreamView:
        return status_mod.StreamView(name="ingest", key="k", length=0 if first is None else 2,
                                     first_id=first, last_id=last, groups=2)

    # Partition 2 holds the oldest entry, partition 0 the newest; 1 is empty.
    total = status_mod.total_stream("ingest", "*", [view("5-0", "90-1"), view(None, None),
                                                     view("3-7", "40-0")])
    assert (total.length, total.first_id, total.last_id) == (4, "2/3-7", "0/90-1")

"""Streams, groups, lag and feeds, on Redis 7 and on the embedded Redis 6.2."""

from __future__ import annotations

from typing import Any

import pytest

from livefeed.core import status as status_mod
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.status import Status
from livefeed.schemas.event import encode_event
from tests.helpers.streams import both, event, groups, ingest


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
async def test_lag_is_counted_after_deletions(r: Any, keys: Keys) -> None:
    # Redis 7 reports a nil lag when entries after the group's position were deleted;
    # Redis 6.2 never reports one. Both must come out as the entries left to deliver.
    ids = await ingest(r, keys, 10)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "p", {keys.ingest_of("alice"): ">"}, count=4)
    await r.xdel(keys.ingest_of("alice"), ids[6])
    persist = {g.name: g for g in await Status(r, keys).groups()}[PERSIST_GROUP]
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
    persist = {g.name: g for g in await Status(r, keys).groups()}[PERSIST_GROUP]
    assert persist.lag_exact is False
    assert persist.lag is not None and 4 <= persist.lag <= 9


@both
async def test_feed_sample(r: Any, keys: Keys) -> None:
    log = EventLog(r, keys, feed_maxlen=100, dedupe_ttl_s=60)
    evs = [event(f"user{i:02d}") for i in range(12)]
    await log.fan_out([(str(e.id), e.user_id, encode_event(e)) for e in evs])
    status = await Status(r, keys, feed_sample=10).status()
    assert len(status.feeds) == 10 and status.feeds_more
    assert all(f.length == 1 and f.key.startswith(f"{keys.prefix}:feed:") for f in status.feeds)
    small = await Status(r, keys, feed_sample=20).status()
    assert len(small.feeds) == 12 and not small.feeds_more


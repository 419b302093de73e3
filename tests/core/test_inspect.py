"""Streams, groups, lag, pending and claims, on Redis 7 and on the embedded Redis 6.2."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from livefeed.core import inspect as insp
from livefeed.core.eventlog import EventLog
from livefeed.core.inspect import InspectError, Inspector, format_ms, parse_duration_ms
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.schemas.event import encode_event
from tests.helpers.streams import both, event, groups, ingest, make_stale
from tests.helpers.waiting import eventually


async def wait_consumer_idle(r: Any, keys: Keys, group: str, consumer: str, ms: int) -> None:
    async def idle() -> bool:
        infos = await r.xinfo_consumers(keys.ingest, group)
        return any(c["name"].decode() == consumer and c["idle"] >= ms for c in infos)

    await eventually(idle, what=f"{consumer} idle for {ms} ms")


def test_durations() -> None:
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("30s") == 30_000
    assert parse_duration_ms("5m") == 300_000
    assert parse_duration_ms("1h") == 3_600_000
    assert parse_duration_ms("1.5s") == 1500
    assert parse_duration_ms("12") == 12_000
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms("soon")
    assert format_ms(850) == "850ms"
    assert format_ms(12_300) == "12.3s"
    assert format_ms(245_000) == "4m05s"
    assert format_ms(None) == "-"


@both
async def test_status_of_an_empty_prefix(r: Any, keys: Keys) -> None:
    status = await Inspector(r, keys).status()
    assert [(s.name, s.length, s.first_id) for s in status.streams] == [
        ("ingest", 0, None), ("dead", 0, None)]
    assert status.groups == [] and status.feeds == []


@both
async def test_status_counts_pending_lag_and_consumers(r: Any, keys: Keys) -> None:
    ids = await ingest(r, keys, 10)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "persist-1", {keys.ingest: ">"}, count=4)
    await r.xack(keys.ingest, PERSIST_GROUP, ids[0])

    status = await Inspector(r, keys).status()
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
    await r.xreadgroup(PERSIST_GROUP, "p", {keys.ingest: ">"}, count=4)
    await r.xdel(keys.ingest, ids[6])
    persist = {g.name: g for g in await Inspector(r, keys).groups()}[PERSIST_GROUP]
    assert (persist.lag, persist.lag_exact) == (5, True)


@both
async def test_lag_count_stops_at_the_cap(r: Any, keys: Keys,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(insp, "LAG_COUNT_CAP", 4)
    monkeypatch.setattr(insp, "_PAGE", 2)
    ids = await ingest(r, keys, 12)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "p", {keys.ingest: ">"}, count=2)
    await r.xdel(keys.ingest, ids[5])  # Redis 7 too must count: its lag is nil now
    persist = {g.name: g for g in await Inspector(r, keys).groups()}[PERSIST_GROUP]
    assert persist.lag_exact is False
    assert persist.lag is not None and 4 <= persist.lag <= 9


@both
async def test_feed_sample(r: Any, keys: Keys) -> None:
    log = EventLog(r, keys, feed_maxlen=100, dedupe_ttl_s=60)
    evs = [event(f"user{i:02d}") for i in range(12)]
    await log.fan_out([(str(e.id), e.user_id, encode_event(e)) for e in evs])
    status = await Inspector(r, keys, feed_sample=10).status()
    assert len(status.feeds) == 10 and status.feeds_more
    assert all(f.length == 1 and f.key.startswith(f"{keys.prefix}:feed:") for f in status.feeds)
    small = await Inspector(r, keys, feed_sample=20).status()
    assert len(small.feeds) == 12 and not small.feeds_more


@both
async def test_pending_shows_owner_deliveries_and_preview(r: Any, keys: Keys) -> None:
    ids = await ingest(r, keys, 5)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "crashed", {keys.ingest: ">"}, count=3)
    await r.xreadgroup(PERSIST_GROUP, "crashed", {keys.ingest: "0"})  # a restart re-read
    await r.xreadgroup(FANOUT_GROUP, "fan-1", {keys.ingest: ">"}, count=1)
    await make_stale(r, keys, PERSIST_GROUP, "crashed", 120_000)
    ins = Inspector(r, keys)

    view = await ins.pending()
    assert view.total == 4 and not view.truncated
    rows = [(e.group, e.id, e.consumer, e.deliveries) for e in view.entries]
    assert rows == [(FANOUT_GROUP, ids[0], "fan-1", 1), (PERSIST_GROUP, ids[0], "crashed", 2),
                    (PERSIST_GROUP, ids[1], "crashed", 2), (PERSIST_GROUP, ids[2], "crashed", 2)]
    first = view.entries[1]
    assert first.user == "alice" and first.preview == "news@example.com: Issue 0"
    assert first.idle_ms >= 120_000 and not first.gone

    stale = await ins.pending(min_idle_ms=60_000)
    assert [e.consumer for e in stale.entries] == ["crashed"] * 3
    assert [e.id for e in (await ins.pending(consumer="fan-1")).entries] == [ids[0]]
    limited = await ins.pending(group=PERSIST_GROUP, limit=2)
    assert [e.id for e in limited.entries] == ids[:2] and limited.truncated
    with pytest.raises(InspectError, match="no group 'nope'"):
        await ins.pending(group="nope")


@both
async def test_pending_entry_whose_payload_is_gone(r: Any, keys: Keys) -> None:
    ids = await ingest(r, keys, 2)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "c", {keys.ingest: ">"})
    await r.xdel(keys.ingest, ids[0])
    view = await Inspector(r, keys).pending(group=PERSIST_GROUP)
    assert [(e.id, e.gone, e.preview) for e in view.entries] == [
        (ids[0], True, None), (ids[1], False, "news@example.com: Issue 1")]


@both
async def test_claim_dry_run_then_move_then_complete(r: Any, keys: Keys) -> None:
    ids = await ingest(r, keys, 6)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "dead-1", {keys.ingest: ">"}, count=3)
    await r.xreadgroup(PERSIST_GROUP, "alive", {keys.ingest: ">"}, count=1)
    await make_stale(r, keys, PERSIST_GROUP, "dead-1", 120_000)
    ins = Inspector(r, keys)

    dry = await ins.claim(group=PERSIST_GROUP, min_idle_ms=60_000, dry_run=True)
    assert dry.dry_run and dry.to == "alive"  # the live consumer, picked by default
    assert [(e.id, e.consumer) for e in dry.entries] == [(i, "dead-1") for i in ids[:3]]
    owners = {e.consumer for e in (await ins.pending(group=PERSIST_GROUP)).entries}
    assert owners == {"dead-1", "alive"}  # nothing moved

    seen: list[tuple[int, int]] = []
    done = await ins.claim(group=PERSIST_GROUP, min_idle_ms=60_000, to="rescuer",
                           progress=lambda d, t: seen.append((d, t)))
    assert [(e.id, e.consumer, e.deliveries) for e in done.entries] == [
        (i, "dead-1", 2) for i in ids[:3]]
    assert seen and seen[-1] == (3, 3)
    after = await ins.pending(group=PERSIST_GROUP)
    assert {e.id: (e.consumer, e.deliveries) for e in after.entries} == {
        ids[0]: ("rescuer", 2), ids[1]: ("rescuer", 2), ids[2]: ("rescuer", 2),
        ids[3]: ("alive", 1)}

    # The claimer completes them as a restarted consumer does: its own pending, then ack.
    reply = await r.xreadgroup(PERSIST_GROUP, "rescuer", {keys.ingest: "0"})
    got = [e[0].decode() for e in reply[0][1]]
    assert got == ids[:3]
    assert await r.xack(keys.ingest, PERSIST_GROUP, *got) == 3
    left = await ins.pending(group=PERSIST_GROUP)
    assert [(e.id, e.consumer) for e in left.entries] == [(ids[3], "alive")]


@both
async def test_claim_needs_a_live_consumer_or_a_name(r: Any, keys: Keys) -> None:
    await ingest(r, keys, 3)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "dead-1", {keys.ingest: ">"}, count=2)
    await make_stale(r, keys, PERSIST_GROUP, "dead-1", 120_000)
    ins = Inspector(r, keys)
    # The only recently active consumer owns the stale entries: it is no rescuer.
    with pytest.raises(InspectError, match="--to"):
        await ins.claim(group=PERSIST_GROUP, min_idle_ms=60_000)
    await r.xreadgroup(PERSIST_GROUP, "idle-1", {keys.ingest: ">"})
    await r.xack(keys.ingest, PERSIST_GROUP, *[
        row["message_id"] for row in await r.xpending_range(
            keys.ingest, PERSIST_GROUP, min="-", max="+", count=10, consumername="idle-1")])
    # A consumer idle for longer than min-idle is not live either.
    await wait_consumer_idle(r, keys, PERSIST_GROUP, "idle-1", 300)
    with pytest.raises(InspectError, match="--to"):
        await ins.claim(group=PERSIST_GROUP, min_idle_ms=300)
    with pytest.raises(InspectError, match="no group"):
        await ins.claim(group="nope", min_idle_ms=1, to="x")
    # Not idle enough: nothing moves.
    none = await ins.claim(group=PERSIST_GROUP, min_idle_ms=600_000, to="x")
    assert none.entries == []


@both
async def test_claim_of_deleted_payloads(r: Any, keys: Keys) -> None:
    ids = await ingest(r, keys, 3)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "dead-1", {keys.ingest: ">"})
    await make_stale(r, keys, PERSIST_GROUP, "dead-1", 120_000)
    await r.xdel(keys.ingest, ids[1])
    done = await Inspector(r, keys).claim(group=PERSIST_GROUP, min_idle_ms=60_000, to="x")
    version = (await r.info("server"))["redis_version"]
    if version.startswith("6."):
        # 6.2 claims the deleted entry with a nil payload and keeps it pending.
        assert [(e.id, e.gone) for e in done.entries] == [
            (ids[0], False), (ids[1], True), (ids[2], False)]
    else:
        # 7 drops it from the pending list and says so.
        assert [e.id for e in done.entries] == [ids[0], ids[2]]
        assert done.vanished == [ids[1]]


def test_views_encode_to_json() -> None:
    from livefeed.schemas.admin import PendingEntry

    entry = PendingEntry(id="1-0", group="g", consumer="c", idle_ms=1, deliveries=1)
    assert msgspec.json.decode(msgspec.json.encode(entry))["gone"] is False

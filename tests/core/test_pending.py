"""Pending entries and claims, on Redis 7 and on the embedded Redis 6.2."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.pending import Pending, PendingError
from tests.helpers.streams import both, groups, ingest, make_stale, refs, wait_consumer_idle


@both
async def test_pending_shows_owner_deliveries_and_preview(r: Any, keys: Keys) -> None:
    ids = refs(keys, "alice", await ingest(r, keys, 5))
    await groups(r, keys)
    stream = keys.ingest_of("alice")
    await r.xreadgroup(PERSIST_GROUP, "crashed", {stream: ">"}, count=3)
    await r.xreadgroup(PERSIST_GROUP, "crashed", {stream: "0"})  # a restart re-read
    await r.xreadgroup(FANOUT_GROUP, "fan-1", {stream: ">"}, count=1)
    await make_stale(r, keys, PERSIST_GROUP, "crashed", 120_000)
    pending = Pending(r, keys)

    view = await pending.view()
    assert view.total == 4 and not view.truncated
    rows = [(e.group, e.id, e.consumer, e.deliveries) for e in view.entries]
    assert rows == [(FANOUT_GROUP, ids[0], "fan-1", 1), (PERSIST_GROUP, ids[0], "crashed", 2),
                    (PERSIST_GROUP, ids[1], "crashed", 2), (PERSIST_GROUP, ids[2], "crashed", 2)]
    first = view.entries[1]
    assert first.user == "alice" and first.preview == "news@example.com: Issue 0"
    assert first.idle_ms >= 120_000 and not first.gone

    stale = await pending.view(min_idle_ms=60_000)
    assert [e.consumer for e in stale.entries] == ["crashed"] * 3
    assert [e.id for e in (await pending.view(consumer="fan-1")).entries] == [ids[0]]
    # Truncated means more entries *match*: fan-1 has one, the others' do not count.
    only = await pending.view(consumer="fan-1", limit=1)
    assert [e.id for e in only.entries] == [ids[0]] and not only.truncated
    limited = await pending.view(group=PERSIST_GROUP, limit=2)
    assert [e.id for e in limited.entries] == ids[:2] and limited.truncated
    with pytest.raises(PendingError, match="no group 'nope'"):
        await pending.view(group="nope")


@both
async def test_pending_entry_whose_payload_is_gone(r: Any, keys: Keys) -> None:
    sids = await ingest(r, keys, 2)
    ids = refs(keys, "alice", sids)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "c", {keys.ingest_of("alice"): ">"})
    await r.xdel(keys.ingest_of("alice"), sids[0])
    view = await Pending(r, keys).view(group=PERSIST_GROUP)
    assert [(e.id, e.gone, e.preview) for e in view.entries] == [
        (ids[0], True, None), (ids[1], False, "news@example.com: Issue 1")]


@both
async def test_claim_dry_run_then_move_then_complete(r: Any, keys: Keys) -> None:
    sids = await ingest(r, keys, 6)
    ids = refs(keys, "alice", sids)
    await groups(r, keys)
    stream = keys.ingest_of("alice")
    await r.xreadgroup(PERSIST_GROUP, "dead-1", {stream: ">"}, count=3)
    await r.xreadgroup(PERSIST_GROUP, "alive", {stream: ">"}, count=1)
    await make_stale(r, keys, PERSIST_GROUP, "dead-1", 120_000)
    pending = Pending(r, keys)

    dry = await pending.claim(group=PERSIST_GROUP, min_idle_ms=60_000, dry_run=True)
    assert dry.dry_run and dry.to == "alive"  # the live consumer, picked by default
    assert [(e.id, e.consumer) for e in dry.entries] == [(i, "dead-1") for i in ids[:3]]
    owners = {e.consumer for e in (await pending.view(group=PERSIST_GROUP)).entries}
    assert owners == {"dead-1", "alive"}  # nothing moved

    seen: list[tuple[int, int]] = []
    done = await pending.claim(group=PERSIST_GROUP, min_idle_ms=60_000, to="rescuer",
                           progress=lambda d, t: seen.append((d, t)))
    assert [(e.id, e.consumer, e.deliveries) for e in done.entries] == [
        (i, "dead-1", 2) for i in ids[:3]]
    assert seen and seen[-1] == (3, 3)
    after = await pending.view(group=PERSIST_GROUP)
    assert {e.id: (e.consumer, e.deliveries) for e in after.entries} == {
        ids[0]: ("rescuer", 2), ids[1]: ("rescuer", 2), ids[2]: ("rescuer", 2),
        ids[3]: ("alive", 1)}

    # The claimer completes them as a restarted consumer does: its own pending, then ack.
    reply = await r.xreadgroup(PERSIST_GROUP, "rescuer", {stream: "0"})
    got = [e[0].decode() for e in reply[0][1]]
    assert got == sids[:3]
    assert await r.xack(stream, PERSIST_GROUP, *got) == 3
    left = await pending.view(group=PERSIST_GROUP)
    assert [(e.id, e.consumer) for e in left.entries] == [(ids[3], "alive")]


@both
async def test_claim_needs_a_live_consumer_or_a_name(r: Any, keys: Keys) -> None:
    await ingest(r, keys, 3)
    await groups(r, keys)
    stream = keys.ingest_of("alice")
    await r.xreadgroup(PERSIST_GROUP, "dead-1", {stream: ">"}, count=2)
    await make_stale(r, keys, PERSIST_GROUP, "dead-1", 120_000)
    pending = Pending(r, keys)
    # The only recently active consumer owns the stale entries: it is no rescuer.
    with pytest.raises(PendingError, match="--to"):
        await pending.claim(group=PERSIST_GROUP, min_idle_ms=60_000)
    await r.xreadgroup(PERSIST_GROUP, "idle-1", {stream: ">"})
    await r.xack(stream, PERSIST_GROUP, *[
        row["message_id"] for row in await r.xpending_range(
            stream, PERSIST_GROUP, min="-", max="+", count=10, consumername="idle-1")])
    # A consumer idle for longer than min-idle is not live either.
    await wait_consumer_idle(r, keys, PERSIST_GROUP, "idle-1", 300)
    with pytest.raises(PendingError, match="--to"):
        await pending.claim(group=PERSIST_GROUP, min_idle_ms=300)
    with pytest.raises(PendingError, match="no group"):
        await pending.claim(group="nope", min_idle_ms=1, to="x")
    # Not idle enough: nothing moves.
    none = await pending.claim(group=PERSIST_GROUP, min_idle_ms=600_000, to="x")
    assert none.entries == []


@both
async def test_claim_of_deleted_payloads(r: Any, keys: Keys) -> None:
    sids = await ingest(r, keys, 3)
    ids = refs(keys, "alice", sids)
    await groups(r, keys)
    await r.xreadgroup(PERSIST_GROUP, "dead-1", {keys.ingest_of("alice"): ">"})
    await make_stale(r, keys, PERSIST_GROUP, "dead-1", 120_000)
    await r.xdel(keys.ingest_of("alice"), sids[1])
    done = await Pending(r, keys).claim(group=PERSIST_GROUP, min_idle_ms=60_000, to="x")
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

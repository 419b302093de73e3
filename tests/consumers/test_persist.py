"""The persist consumer against the real Redis and PostgreSQL (and a fault proxy)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY

from livefeed.consumers.persist import PersistHandler, write_isolating
from livefeed.core import db, newsletters
from livefeed.core.embedded import free_port
from livefeed.core.errors import RetryBatch
from livefeed.core.eventlog import EventLog
from livefeed.core.groups import GroupRunner, Permanent, RunnerConfig
from livefeed.core.groupstream import Entry, ensure_group, ref
from livefeed.core.keys import PERSIST_GROUP, Keys
from livefeed.ops.faultproxy import FaultProxy
from livefeed.schemas.event import Event, encode_event
from livefeed.schemas.stream import IngestEntry
from tests.helpers.streams import dead_rows, pending_total
from tests.helpers.waiting import eventually

# Marked here too: anyio's plugin drops the parameters of tests it is told about only
# after collection (as tests/conftest.py does).
pytestmark = pytest.mark.anyio


def event(i: int, user: str = "alice", subject: str | None = None) -> Event:
    return Event(id=uuid.uuid4(), user_id=user, subject=subject or f"Digest #{i}",
                 sender="news@example.com", received_at=dt.datetime.now(dt.UTC),
                 category="news" if i % 2 else None)


async def append(redis: Any, keys: Keys, events: Sequence[Event]) -> list[str]:
    await ensure_group(redis, keys.ingest_of("alice"), PERSIST_GROUP)
    log = EventLog(redis, keys, feed_maxlen=100, dedupe_ttl_s=60)
    done = await log.append([IngestEntry.of(e) for e in events])
    return [a.stream_id for a in done if a.stream_id]


def at(stream_id: str, user: str = "alice") -> str:
    """The ref of `user`'s entry `stream_id` (in the user's partition's stream)."""
    return ref(Keys().partition_of(user), stream_id)


def config(**kw: Any) -> RunnerConfig:
    base: dict[str, Any] = dict(batch_size=50, block_ms=50, claim_idle_ms=300,
                                max_deliveries=2, trim_every_s=None, backoff_base_s=0.05,
                                backoff_cap_s=0.2)
    return RunnerConfig(**{**base, **kw})


async def rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT id, subject, stream_id FROM newsletters ORDER BY stream_id")


def transient_count() -> float:
    return REGISTRY.get_sample_value("livefeed_transient_failures_total",
                                     {"group": PERSIST_GROUP}) or 0.0


async def test_a_rejected_row_is_isolated_and_the_rest_written(pool: asyncpg.Pool) -> None:
    good = [(f"1-{i}", newsletters.row(event(i), f"1-{i}")) for i in range(12)]
    bad = ("1-99", newsletters.row(event(99, subject="NUL \u0000 inside"), "1-99"))
    failures = await write_isolating(pool, good[:7] + [bad] + good[7:])
    assert list(failures) == ["1-99"]
    assert "CharacterNotInRepertoire" in failures["1-99"]
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 12


async def test_rows_prepared_ahead_serve_only_the_batch_they_were_prepared_for(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    rows_of = PersistHandler._rows

    def counting(entries: Sequence[Entry]) -> Any:
        decoded.append(len(entries))
        return rows_of(entries)

    monkeypatch.setattr(PersistHandler, "_rows", staticmethod(counting))
    entries = [Entry(at(f"1-{i}"), str(e.id), e.user_id, encode_event(e))
               for i, e in enumerate(event(i) for i in range(6))]
    entries.append(Entry(at("1-9"), "x", "alice", b"{nope"))
    handler = PersistHandler(pool)
    handler.prepare(entries[3:])  # the runner's prefetched batch, decoded ahead
    assert await handler.handle(entries[:3]) == {}  # the current one: decoded now
    failures = await handler.handle(entries[3:])  # uses what was prepared
    assert list(failures) == [at("1-9")]
    assert failures[at("1-9")].startswith("undecodable payload")
    assert decoded == [4, 3]
    assert await handler.handle(entries[3:6]) == {}  # prepared once only: decoded again
    assert decoded == [4, 3, 3]
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 6


async def test_one_id_for_two_users_is_two_rows_and_a_later_version_replaces_one(
    pool: asyncpg.Pool,
) -> None:
    shared = event(1)
    bob = msgspec.structs.replace(shared, user_id="bob", subject="Bob's")
    newer = msgspec.structs.replace(shared, subject="Corrected")

    def entry(sid: str, e: Event) -> Entry:
        return Entry(at(sid, e.user_id), str(e.id), e.user_id, encode_event(e))

    handler = PersistHandler(pool)
    assert await handler.handle([entry("1-0", shared), entry("1-1", bob)]) == {}
    assert await handler.handle([entry("1-0", shared)]) == {}  # redelivered
    assert await handler.handle([entry("2-0", newer)]) == {}  # reused after the window
    got = await pool.fetch("SELECT user_id, id, subject, stream_id FROM newsletters "
                           "ORDER BY user_id")
    assert [tuple(r) for r in got] == [("alice", shared.id, "Corrected", "2-0"),
                                       ("bob", shared.id, "Bob's", "1-1")]


class Spy(PersistHandler):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.sizes: list[int] = []

    async def handle(self, entries: Sequence[Entry]) -> dict[str, str]:
        self.sizes.append(len(entries))
        return await super().handle(entries)


async def run_until(runner: GroupRunner, cond: Any, timeout: float = 30) -> None:
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, stopping)
        try:
            await eventually(cond, timeout=timeout)
        finally:
            stopping.set()


async def test_batches_flush_at_size_or_after_flush_ms(
    redis: Any, keys: Keys, pool: asyncpg.Pool
) -> None:
    events = [event(i) for i in range(25)]
    ids = await append(redis, keys, events)
    spy = Spy(pool)
    runner = GroupRunner(redis, keys, PERSIST_GROUP, spy, consumer="p1",
                         config=config(batch_size=10, linger_ms=300))

    async def written() -> bool:
        return len(await rows(pool)) == 25

    await run_until(runner, written)
    assert spy.sizes == [10, 10, 5]  # the last one flushed when flush_ms passed
    got = await rows(pool)
    assert [r["stream_id"] for r in got] == sorted(ids)
    assert {r["id"] for r in got} == {e.id for e in events}


async def test_poison_entries_end_in_dead_letters_and_their_batch_is_written(
    redis: Any, keys: Keys, pool: asyncpg.Pool
) -> None:
    events = [event(i) for i in range(10)]
    # Ingest refuses both; entries appended before that rule (or by hand) still arrive.
    # The database refuses a time that does not convert to UTC (the row is isolated and
    # retried until max_deliveries); the decoder refuses NUL without a database round trip.
    too_late = msgspec.structs.replace(
        event(4), received_at=dt.datetime.fromisoformat("9999-12-31T23:59:59-23:59"))
    events.insert(4, too_late)
    events.insert(7, event(7, subject="NUL \u0000 byte"))
    await append(redis, keys, events)
    junk = await redis.xadd(keys.ingest_of("alice"),
                            {"event_id": "j", "user": "u", "data": b"{nope"})
    runner = GroupRunner(redis, keys, PERSIST_GROUP, PersistHandler(pool), consumer="p1",
                         config=config(max_deliveries=2, claim_idle_ms=200))

    async def settled() -> bool:
        pending = await pending_total(redis, keys, PERSIST_GROUP)
        return bool(len(await dead_rows(redis, keys)) == 3 and pending == 0)

    await run_until(runner, settled)
    assert len(await rows(pool)) == 10
    dead = {f[b"event_id"]: f for _, f in await redis.xrange(keys.dead_of("alice"))}
    late = dead[str(too_late.id).encode()]
    assert b"DataError" in late[b"error"] and b"out of range" in late[b"error"]
    # the database refuses the row's data: no redelivery can fix it, so at once
    assert late[b"deliveries"] == b"1" and late[b"group"] == b"persist"
    # an undecodable payload may be a newer producer's: redelivered to max_deliveries
    nul = dead[str(events[7].id).encode()]
    assert nul[b"error"].startswith(b"undecodable payload") and b"$.subject" in nul[b"error"]
    assert nul[b"deliveries"] == b"2" and nul[b"group"] == b"persist"
    assert dead[b"j"][b"error"].startswith(b"undecodable payload")
    assert dead[b"j"][b"deliveries"] == b"2"
    assert dead[b"j"][b"source_id"] == ref(keys.partition_of("alice"), junk.decode()).encode()
    assert dead[b"j"][b"data"] == b"{nope"


OUT_OF_RANGE = dt.datetime(9999, 12, 31, 23, 59, 59,
                           tzinfo=dt.timezone(-dt.timedelta(hours=23, minutes=59)))


async def test_rows_the_database_refuses_are_isolated_once_and_dead_lettered_at_once(
    redis: Any, keys: Keys, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch with rows the database refuses among good ones: the good rows are written
    once, the bad ones are dead-lettered on their first delivery with the database's error,
    and the batch is bisected once, however many deliveries are allowed.

    From the stream, such rows are times beyond years 1-9999 UTC (the stream decoder
    refuses NUL before any insert: test_poison_entries_end_in_dead_letters...)."""
    events = [event(i) for i in range(30)]
    times = {3: "0001-01-01T00:00:00+01:00", 11: "0001-01-01T12:30:00+23:59",
             12: OUT_OF_RANGE.isoformat(), 25: "9999-12-31T23:00:00-01:30"}
    bad = {i: msgspec.structs.replace(event(i), received_at=dt.datetime.fromisoformat(t))
           for i, t in times.items()}
    for i, e in bad.items():
        events[i] = e
    ids = await append(redis, keys, events)
    statements: list[int] = []
    insert_batch = newsletters.insert_batch

    async def counting(conn: Any, batch: Sequence[newsletters.Row]) -> int:
        statements.append(len(batch))
        return await insert_batch(conn, batch)

    monkeypatch.setattr(newsletters, "insert_batch", counting)
    spy = Spy(pool)
    runner = GroupRunner(redis, keys, PERSIST_GROUP, spy, consumer="p1",
                         config=config(max_deliveries=5, claim_idle_ms=200))

    async def settled() -> bool:
        pending = await pending_total(redis, keys, PERSIST_GROUP)
        return bool(len(await dead_rows(redis, keys)) == len(bad) and pending == 0)

    await run_until(runner, settled)
    good = [e for i, e in enumerate(events) if i not in bad]
    assert sorted(str(r["id"]) for r in await rows(pool)) == sorted(str(e.id) for e in good)
    assert spy.sizes == [30]  # one delivery, no redelivery of the bad entries
    assert len(statements) <= 2 * len(events)  # one bisection
    dead = {f[b"source_id"].decode(): f for _, f in await redis.xrange(keys.dead_of("alice"))}
    refs = [ref(keys.partition_of("alice"), sid) for sid in ids]
    assert set(dead) == {refs[i] for i in bad}
    for i, e in bad.items():
        letter = dead[refs[i]]
        assert letter[b"event_id"] == str(e.id).encode() and letter[b"deliveries"] == b"1"
        assert letter[b"error"].startswith(b"database rejected row: DataError")
        assert b"date value out of range" in letter[b"error"]


async def test_a_refused_constraint_is_retried_up_to_max_deliveries(
    redis: Any, keys: Keys, pool: asyncpg.Pool
) -> None:
    """A constraint may be the operator's and be lifted meanwhile: not permanent."""
    await pool.execute("ALTER TABLE newsletters ADD CONSTRAINT no_pills "
                       "CHECK (subject <> 'Poison pill')")
    events = [event(0), event(1, subject="Poison pill"), event(2)]
    await append(redis, keys, events)
    spy = Spy(pool)
    runner = GroupRunner(redis, keys, PERSIST_GROUP, spy, consumer="p1",
                         config=config(max_deliveries=3, claim_idle_ms=200))

    async def settled() -> bool:
        pending = await pending_total(redis, keys, PERSIST_GROUP)
        return bool(len(await dead_rows(redis, keys)) == 1 and pending == 0)

    await run_until(runner, settled)
    assert {r["id"] for r in await rows(pool)} == {events[0].id, events[2].id}
    [(_, letter)] = await redis.xrange(keys.dead_of("alice"))
    assert letter[b"deliveries"] == b"3" and b"no_pills" in letter[b"error"]
    assert spy.sizes == [3, 1, 1]


async def test_database_outage_keeps_entries_pending_then_drains(
    redis: Any, keys: Keys, pool: asyncpg.Pool, database_url: str
) -> None:
    async with FaultProxy.for_url(database_url) as proxy:
        through = await db.create_pool(proxy.url_for(database_url), min_size=0, max_size=2)
        try:
            proxy.cut()
            # u0 and u1 share a partition, u2 has another: 160 and 80 entries
            events = [event(i, user=f"u{i % 3}") for i in range(240)]
            await append(redis, keys, events)
            per_partition = Counter(keys.partition_of(e.user_id) for e in events)
            runners = [
                GroupRunner(redis, keys, PERSIST_GROUP, PersistHandler(through),
                            consumer=name, config=config(claim_idle_ms=300, max_deliveries=2))
                for name in ("p1", "p2")
            ]
            stopping = anyio.Event()
            before = transient_count()
            async with anyio.create_task_group() as tg:
                for runner in runners:
                    tg.start_soon(runner.run, stopping)

                async def retried_a_while() -> bool:  # each retry ~0.2 s: several claim_idle
                    return transient_count() - before >= 20

                await eventually(retried_a_while)
                pending = {p: await redis.xpending_range(keys.ingest(p), PERSIST_GROUP,
                                                         min="-", max="+", count=1000)
                           for p in per_partition}
                # both consumers hold one batch of the batch size (50), drawn from both
                # partitions; none was claimed by the other (the keepalive), no delivery
                # was burned by the retries, nothing more was read
                count = Counter(row["consumer"] for part in pending.values() for row in part)
                assert count == {b"p1": 50, b"p2": 50}
                assert {row["times_delivered"] for part in pending.values()
                        for row in part} == {1}
                assert all(pending.values())
                assert len(await rows(pool)) == 0
                proxy.restore()

                async def drained() -> bool:
                    left = await pending_total(redis, keys, PERSIST_GROUP)
                    return bool(left == 0 and len(await rows(pool)) == 240)

                await eventually(drained)
                stopping.set()
            assert await dead_rows(redis, keys) == []
            assert {r["id"] for r in await rows(pool)} == {e.id for e in events}
        finally:
            await through.close()


@pytest.mark.parametrize("rows_per_batch", [1, 7])
async def test_write_isolating_with_only_bad_rows(pool: asyncpg.Pool, rows_per_batch: int) -> None:
    bad = [(f"1-{i}", newsletters.row(event(i, subject="\u0000"), f"1-{i}"))
           for i in range(rows_per_batch)]
    failures = await write_isolating(pool, bad)
    assert set(failures) == {b[0] for b in bad}
    assert all(isinstance(error, Permanent) for error in failures.values())


async def test_an_unreachable_database_asks_the_runner_to_retry_the_batch() -> None:
    # min_size=0: the pool connects on first use, to a port nobody listens on.
    pool = await db.create_pool(f"postgresql://nobody@127.0.0.1:{free_port()}/none",
                                min_size=0, max_size=1, timeout=5)
    try:
        e = event(1)
        entry = Entry(at("1-1"), str(e.id), e.user_id, encode_event(e))
        with pytest.raises(RetryBatch, match="PostgreSQL unavailable") as info:
            await PersistHandler(pool).handle([entry])
        assert isinstance(info.value.__cause__, OSError)
    finally:
        pool.terminate()

"""The `newsletters` table's statements against the real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import msgspec
import pytest

from livefeed.core import newsletters
from livefeed.core.newsletters import Row
from livefeed.schemas.event import Event

pytestmark = pytest.mark.anyio

AT = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def event(i: int, user: str = "alice", **over: object) -> Event:
    e = Event(id=uuid.uuid4(), user_id=user, subject=f"Digest #{i}", sender="news@example.com",
              received_at=AT + dt.timedelta(minutes=i), category="news" if i % 2 else None)
    return msgspec.structs.replace(e, **over) if over else e


async def stored(pool: asyncpg.Pool) -> list[tuple[str, str, str]]:
    """(user_id, subject, stream_id) of every row."""
    return [(r["user_id"], r["subject"], r["stream_id"]) for r in await pool.fetch(
        "SELECT user_id, subject, stream_id FROM newsletters ORDER BY user_id, stream_id")]


def test_a_row_is_the_event_in_column_order() -> None:
    e = event(1, preview="Hello")
    assert newsletters.row(e, "5-0") == (e.id, "alice", "Digest #1", "news@example.com",
                                         "news", e.received_at, "Hello", "5-0")
    assert newsletters.COLUMNS == ("id", "user_id", "subject", "sender", "category",
                                   "received_at", "preview", "stream_id")
    assert newsletters.columns([]) == [[] for _ in newsletters.COLUMNS]


async def test_batch_insert_is_idempotent(pool: asyncpg.Pool) -> None:
    batch = [newsletters.row(event(i), f"1-{i}") for i in range(20)]
    assert await newsletters.insert_batch(pool, batch) == 20
    assert await newsletters.insert_batch(pool, batch[5:] + [newsletters.row(event(99), "2-0")]
                                          ) == 1
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 21


async def test_ids_are_scoped_per_user(pool: asyncpg.Pool) -> None:
    e = event(1)
    for_bob = msgspec.structs.replace(e, user_id="bob", subject="Bob's")
    assert await newsletters.insert_batch(pool, [newsletters.row(e, "1-0"),
                                                 newsletters.row(for_bob, "2-0")]) == 2
    assert await newsletters.insert_one(pool, newsletters.row(e, "")) is False
    assert await stored(pool) == [("alice", "Digest #1", "1-0"), ("bob", "Bob's", "2-0")]


async def test_a_later_entry_with_new_content_replaces_the_row_an_earlier_one_never_does(
    pool: asyncpg.Pool,
) -> None:
    """After the dedupe window ingest accepts a reuse of (user, id) and fanout delivers it:
    the row follows. A redelivery of the older entry (or of the same one) changes nothing."""
    first = event(1)
    reuse = msgspec.structs.replace(first, subject="Corrected digest")
    assert await newsletters.insert_batch(pool, [newsletters.row(first, "10-5")]) == 1
    assert await newsletters.insert_batch(pool, [newsletters.row(reuse, "10-5")]) == 0
    assert await newsletters.insert_batch(pool, [newsletters.row(reuse, "9-7")]) == 0
    assert await stored(pool) == [("alice", "Digest #1", "10-5")]
    assert await newsletters.insert_batch(pool, [newsletters.row(reuse, "11-0")]) == 1
    assert await stored(pool) == [("alice", "Corrected digest", "11-0")]
    # numeric order of the entry ids, not text order ("9-" > "10-" as text)
    assert await newsletters.insert_batch(pool, [newsletters.row(first, "9-9")]) == 0
    # same content from a later entry (`dead retry`): nothing to write
    assert await newsletters.insert_batch(pool, [newsletters.row(reuse, "12-0")]) == 0
    assert await stored(pool) == [("alice", "Corrected digest", "11-0")]


async def test_one_batch_with_two_entries_of_one_event_writes_the_later(
    pool: asyncpg.Pool,
) -> None:
    first = event(1)
    reuse = msgspec.structs.replace(first, subject="Corrected digest")
    rows = [newsletters.row(first, "1-0"), newsletters.row(event(2), "2-0"),
            newsletters.row(reuse, "3-0")]
    assert await newsletters.insert_batch(pool, rows) == 2
    assert await stored(pool) == [("alice", "Digest #2", "2-0"),
                                  ("alice", "Corrected digest", "3-0")]


async def test_single_insert_and_content_check(pool: asyncpg.Pool) -> None:
    e = event(3, preview="p")
    row = newsletters.row(e, "")
    assert await newsletters.same_content(pool, row) is None
    assert await newsletters.insert_one(pool, row) is True
    assert await newsletters.insert_one(pool, row) is False
    assert await newsletters.same_content(pool, row) is True
    # the same instant written with another offset is the same stored content
    moved = e.received_at.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert await newsletters.same_content(pool, row._replace(received_at=moved)) is True
    for change in ({"preview": None}, {"category": "billing"}, {"subject": "other"}):
        assert await newsletters.same_content(pool, row._replace(**change)) is False, change
    assert await newsletters.same_content(pool, row._replace(user_id="bob")) is None


async def test_pages_are_keyset_reads_newest_first(pool: asyncpg.Pool) -> None:
    rows: list[Row] = [newsletters.row(event(i), f"{i}-0") for i in range(5)]
    rows.append(newsletters.row(event(9, user="bob"), "9-0"))
    await newsletters.insert_batch(pool, rows)
    page = await newsletters.read_page(pool, "alice", None, 2)
    assert [r["subject"] for r in page] == ["Digest #4", "Digest #3"]
    assert tuple(page[0]) == rows[4]
    last = page[-1]
    page = await newsletters.read_page(pool, "alice", (last["received_at"], last["id"]), 10)
    assert [r["subject"] for r in page] == ["Digest #2", "Digest #1", "Digest #0"]
    assert await newsletters.read_page(pool, "carol", None, 10) == []


async def test_probe_names_a_missing_table(pool: asyncpg.Pool) -> None:
    await newsletters.probe(pool)
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE newsletters RENAME TO newsletters_away")
        try:
            with pytest.raises(asyncpg.UndefinedTableError):
                await newsletters.probe(conn)
        finally:
            await conn.execute("ALTER TABLE newsletters_away RENAME TO newsletters")

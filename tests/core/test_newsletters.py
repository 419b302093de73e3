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


async def test_single_insert(pool: asyncpg.Pool) -> None:
    e = event(3, preview="p")
    row = newsletters.row(e, "")
    assert await newsletters.insert_one(pool, row) is True
    assert await newsletters.insert_one(pool, row) is False
    assert await stored(pool) == [("alice", "Digest #3", "")]


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

"""The `newsletters` table: its row, and every statement livefeed runs on it.

The table itself is created by `schemas/migrations`. The event id is the primary key,
so a replayed or redelivered entry writes nothing twice.

The functions take any asyncpg connection or pool, so a benchmark can drive the exact
statements the persist consumer and the gateway use.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Final, NamedTuple

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from livefeed.schemas.event import Event

TABLE: Final = "newsletters"


class Row(NamedTuple):
    """One row, in column order (`inserted_at` is the database's own)."""

    id: uuid.UUID
    user_id: str
    subject: str
    sender: str
    category: str | None
    received_at: datetime
    preview: str | None
    stream_id: str  # the ingest stream entry it came from; '' in the pubsub baseline


COLUMNS: Final = Row._fields
_TYPES: Final = ("uuid", "text", "text", "text", "text", "timestamptz", "text", "text")

Executor = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy

_COLS = ", ".join(COLUMNS)
_ARRAYS = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_TYPES, 1))
INSERT_BATCH: Final = (
    f"INSERT INTO {TABLE} ({_COLS}) SELECT * FROM UNNEST({_ARRAYS}) ON CONFLICT (id) DO NOTHING"
)
INSERT_ONE: Final = (
    f"INSERT INTO {TABLE} ({_COLS}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
    "ON CONFLICT (id) DO NOTHING"
)
_PAGE_FIRST: Final = (
    f"SELECT {_COLS} FROM {TABLE} WHERE user_id = $1 "
    "ORDER BY received_at DESC, id DESC LIMIT $2"
)
_PAGE_BEFORE: Final = (
    f"SELECT {_COLS} FROM {TABLE} WHERE user_id = $1 AND (received_at, id) < ($2, $3) "
    "ORDER BY received_at DESC, id DESC LIMIT $4"
)


def row(event: Event, stream_id: str) -> Row:
    assert event.id is not None, "ingest assigns every event an id"
    return Row(event.id, event.user_id, event.subject, event.sender, event.category,
               event.received_at, event.preview, stream_id)


def columns(rows: Sequence[Row]) -> list[list[object]]:
    """Rows to the column arrays UNNEST takes."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in COLUMNS]


async def insert_batch(conn: Executor, rows: Sequence[Row]) -> int:
    """One INSERT ... SELECT FROM UNNEST for all `rows`; returns rows newly inserted."""
    if not rows:
        return 0
    status = await conn.execute(INSERT_BATCH, *columns(rows))
    return int(status.rsplit(" ", 1)[1])


async def insert_one(conn: Executor, row: Row) -> bool:
    """One single-row INSERT (the naive design); True if the row is new."""
    status = await conn.execute(INSERT_ONE, *row)
    return bool(status.endswith(" 1"))


async def read_page(conn: Executor, user: str, before: tuple[datetime, uuid.UUID] | None,
                    limit: int) -> list[asyncpg.Record]:
    """Up to `limit` rows of `user`, newest first (received_at, then id), strictly before
    the keyset position `before` (received_at, id) if given."""
    if before is None:
        return await conn.fetch(_PAGE_FIRST, user, limit)
    return await conn.fetch(_PAGE_BEFORE, user, *before, limit)


async def probe(conn: Executor) -> None:
    """Raises asyncpg.UndefinedTableError if the table is missing (not migrated)."""
    await conn.execute(f"SELECT 1 FROM {TABLE} LIMIT 0")

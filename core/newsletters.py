"""The `newsletters` table: its row, and every statement livefeed runs on it.

The table itself is created by `schemas/migrations`. An event is named by (user_id, id):
that pair is the primary key, so a replayed or redelivered entry writes nothing twice.

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
_CONTENT: Final = ("subject", "sender", "category", "received_at", "preview")

Executor = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy

_COLS = ", ".join(COLUMNS)
_ARRAYS = ", ".join(f"${i}::{t}[]" for i, t in enumerate(_TYPES, 1))
_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in (*_CONTENT, "stream_id"))
_OLD = ", ".join(f"{TABLE}.{c}" for c in _CONTENT)
_NEW = ", ".join(f"EXCLUDED.{c}" for c in _CONTENT)


def _entry_key(table: str) -> str:
    # An ingest entry id `ms-seq` as a sortable pair; NULLs ('' of the baseline) never win.
    return (f"(NULLIF(split_part({table}.stream_id, '-', 1), '')::numeric, "
            f"NULLIF(split_part({table}.stream_id, '-', 2), '')::numeric)")


# A (user_id, id) stored before is replaced only by a different content from a later ingest
# entry: a reuse of the id after the dedupe window, which ingest accepted and fanout
# delivered live. A redelivered (same entry) or retried (same content) event writes nothing.
INSERT_BATCH: Final = (
    f"INSERT INTO {TABLE} ({_COLS}) SELECT * FROM UNNEST({_ARRAYS}) "
    f"ON CONFLICT (user_id, id) DO UPDATE SET {_SET} "
    f"WHERE ({_OLD}) IS DISTINCT FROM ({_NEW}) "
    f"AND {_entry_key('EXCLUDED')} > {_entry_key(TABLE)}"
)
# The `list` mode's writer (the article's design): first content wins, nothing replaced.
INSERT_BATCH_IGNORE: Final = (
    f"INSERT INTO {TABLE} ({_COLS}) SELECT * FROM UNNEST({_ARRAYS}) "
    "ON CONFLICT (user_id, id) DO NOTHING"
)
INSERT_ONE: Final = (
    f"INSERT INTO {TABLE} ({_COLS}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
    "ON CONFLICT (user_id, id) DO NOTHING"
)
_SAME_CONTENT: Final = (
    f"SELECT ({', '.join(_CONTENT)}) IS NOT DISTINCT FROM "
    "($3::text, $4::text, $5::text, $6::timestamptz, $7::text) "
    f"FROM {TABLE} WHERE user_id = $2 AND id = $1"
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
    """One INSERT ... SELECT FROM UNNEST for all `rows`; returns the rows written (new, or
    replacing an older content of the same (user_id, id)).

    `rows` come in ingest order: of two for one (user_id, id) the later one is written
    (one statement cannot write a row twice).
    """
    if not rows:
        return 0
    latest = {(r.user_id, r.id): r for r in rows}
    status = await conn.execute(INSERT_BATCH, *columns(list(latest.values())))
    return int(status.rsplit(" ", 1)[1])


async def insert_batch_ignore(conn: Executor, rows: Sequence[Row]) -> int:
    """One INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO NOTHING for all `rows`; returns
    the rows written (a stored (user_id, id), or a second one in `rows`, writes nothing)."""
    if not rows:
        return 0
    status = await conn.execute(INSERT_BATCH_IGNORE, *columns(rows))
    return int(status.rsplit(" ", 1)[1])


async def insert_one(conn: Executor, row: Row) -> bool:
    """One single-row INSERT (the naive design); True if the row is new."""
    status = await conn.execute(INSERT_ONE, *row)
    return bool(status.endswith(" 1"))


async def same_content(conn: Executor, row: Row) -> bool | None:
    """Whether the stored row of (row.user_id, row.id) has `row`'s content; None if there
    is none (visible to `conn`)."""
    same = await conn.fetchval(_SAME_CONTENT, *row[:7])
    return None if same is None else bool(same)


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

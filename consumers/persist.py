"""The `persist` group: batches of ingest entries into PostgreSQL, one statement per batch.

`insert_batch` and `insert_one` take any asyncpg connection or pool, so a benchmark can
drive the exact statements this consumer uses.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import msgspec

from livefeed.core import db, redis_client
from livefeed.core.groups import TRANSIENT_ERRORS, GroupRunner, RunnerConfig, default_consumer_name
from livefeed.core.groupstream import Entry
from livefeed.core.keys import PERSIST_GROUP, Keys
from livefeed.core.leases import PartitionLeases
from livefeed.core.settings import Settings, SettingsError
from livefeed.schemas.event import Event, decode_event

logger = logging.getLogger(__name__)

Row = tuple[uuid.UUID, str, str, str, str | None, datetime, str | None, str]

COLUMNS = "id, user_id, subject, sender, category, received_at, preview, stream_id"
INSERT_BATCH = (
    f"INSERT INTO newsletters ({COLUMNS}) "
    "SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], "
    "$6::timestamptz[], $7::text[], $8::text[]) ON CONFLICT (id) DO NOTHING"
)
INSERT_ONE = (
    f"INSERT INTO newsletters ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
    "ON CONFLICT (id) DO NOTHING"
)
# The database refuses these rows (bad bytes, constraint): they are poison, the rest of
# the batch is not. Connection errors are not among them: those are transient.
ROW_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)

Executor = asyncpg.Connection | asyncpg.Pool


def to_row(event: Event, stream_id: str) -> Row:
    assert event.id is not None, "ingest assigns every event an id"
    return (event.id, event.user_id, event.subject, event.sender, event.category,
            event.received_at, event.preview, stream_id)


async def insert_batch(conn: Executor, rows: Sequence[Row]) -> int:
    """One INSERT ... SELECT FROM UNNEST for all `rows`; returns rows newly inserted."""
    if not rows:
        return 0
    columns = [list(col) for col in zip(*rows, strict=True)]
    status = await conn.execute(INSERT_BATCH, *columns)
    return int(status.rsplit(" ", 1)[1])


async def insert_one(conn: Executor, row: Row) -> bool:
    """One single-row INSERT (the naive design); True if the row is new."""
    status = await conn.execute(INSERT_ONE, *row)
    return bool(status.endswith(" 1"))


async def write_isolating(conn: Executor, rows: Sequence[tuple[str, Row]]) -> dict[str, str]:
    """Insert (entry id, row) pairs; a row the database rejects is isolated by bisecting
    the batch and reported as {entry id: error}; every other row is written."""
    if not rows:
        return {}
    try:
        await insert_batch(conn, [row for _, row in rows])
        return {}
    except ROW_ERRORS as exc:
        if len(rows) == 1:
            return {rows[0][0]: f"database rejected row: {type(exc).__name__}: {exc}"}
    mid = len(rows) // 2
    return {**await write_isolating(conn, rows[:mid]),
            **await write_isolating(conn, rows[mid:])}


class PersistHandler:
    """Decodes entries and writes them with one statement per batch (see write_isolating)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._ready: tuple[list[str], list[tuple[str, Row]], dict[str, str]] | None = None

    def prepare(self, entries: Sequence[Entry]) -> None:
        """Decode the next batch while the current one is being inserted."""
        self._ready = ([e.id for e in entries], *self._rows(entries))

    async def handle(self, entries: Sequence[Entry]) -> dict[str, str]:
        ready = self._ready
        if ready is not None and ready[0] == [e.id for e in entries]:
            self._ready = None
            rows, failures = ready[1], dict(ready[2])
        else:
            rows, failures = self._rows(entries)
        failures.update(await write_isolating(self.pool, rows))
        return failures

    @staticmethod
    def _rows(entries: Sequence[Entry]) -> tuple[list[tuple[str, Row]], dict[str, str]]:
        failures: dict[str, str] = {}
        rows: list[tuple[str, Row]] = []
        for entry in entries:
            try:
                event = decode_event(entry.data)
            except msgspec.DecodeError as exc:
                failures[entry.id] = f"undecodable payload: {exc}"
                continue
            if event.id is None:
                failures[entry.id] = "event without id"
                continue
            rows.append((entry.id, to_row(event, entry.id)))
        return rows, failures


async def check_table(pool: asyncpg.Pool) -> None:
    """Fail at start, with the fix, if the schema is missing (not at every batch)."""
    try:
        await pool.execute("SELECT 1 FROM newsletters LIMIT 0")
    except asyncpg.UndefinedTableError:
        raise SettingsError(
            "table `newsletters` does not exist in LIVEFEED_DATABASE_URL; run `livefeed migrate`"
        ) from None
    except TRANSIENT_ERRORS as exc:
        logger.warning("PostgreSQL unreachable at start (%s); batches will wait for it", exc)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset for persist: its connections carry no session state (no LISTEN, locks,
    cursors or SET), so skip the reset query asyncpg otherwise sends on every release,
    a round trip per batch. (asyncpg still rolls back a transaction left open.)"""


async def create_pool(dsn: str) -> asyncpg.Pool:
    # min_size=0: the consumer starts (and waits) even while the database is down.
    return await db.create_pool(dsn, min_size=0, max_size=4, command_timeout=60,
                                reset=_keep_session)


async def close_pool(pool: asyncpg.Pool, timeout_s: float = 5.0) -> None:
    """Close gracefully, but never wait on an unreachable server for long: a closing
    connection waits for the server to hang up, bounded only by command_timeout."""
    with anyio.move_on_after(timeout_s) as scope:
        await pool.close()
    if scope.cancelled_caught:
        logger.warning("PostgreSQL did not confirm the close of the pool within %.0fs; "
                       "connections dropped", timeout_s)
    pool.terminate()


async def run(settings: Settings, stopping: anyio.Event, *, name: str | None = None,
              partitions: Sequence[int] | None = None) -> None:
    """The persist role: one consumer until `stopping` is set, then drain. It shares the
    partitions with the group's other consumers through leases, or owns `partitions`."""
    assert settings.redis_url and settings.database_url
    keys = Keys(settings.prefix, partitions=settings.partitions)
    client: Any = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster)
    reader: Any = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster,
                                       blocking=True)
    pool = await create_pool(settings.database_url)
    try:
        await check_table(pool)
        config = RunnerConfig.from_settings(settings, linger=True)
        consumer = name or default_consumer_name()
        leases = PartitionLeases(client, keys, PERSIST_GROUP, consumer,
                                 lease_ms=settings.lease_ms, static=partitions)
        runner = GroupRunner(client, keys, PERSIST_GROUP, PersistHandler(pool),
                             consumer=consumer, reader=reader, config=config,
                             cluster=settings.redis_cluster, leases=leases)
        await runner.run(stopping)
    finally:
        await close_pool(pool)
        await reader.aclose()
        await client.aclose()


"""The `persist` group: batches of ingest entries into PostgreSQL, one statement per batch
(`core.newsletters.insert_batch`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import asyncpg
import msgspec

from livefeed.core import db, newsletters
from livefeed.core.errors import DB_UNAVAILABLE, RetryBatch
from livefeed.core.groups import GroupRunner, Permanent, consumer_clients
from livefeed.core.groupstream import Entry, split_ref
from livefeed.core.keys import PERSIST_GROUP, Keys
from livefeed.core.newsletters import Row
from livefeed.core.settings import Resolved, SettingsError
from livefeed.schemas.event import decode_event

logger = logging.getLogger(__name__)

# The database refuses these rows, not the batch: they are poison, the rest is not.
# Connection errors are not among them: those are transient. A DataError (a NUL in a
# text, a date out of range) is the row's own and fails on every delivery: permanent. A
# constraint may be the operator's and lifted meanwhile: retried up to max_deliveries.
PERMANENT_ROW_ERRORS: tuple[type[Exception], ...] = (asyncpg.DataError,)
ROW_ERRORS: tuple[type[Exception], ...] = (
    *PERMANENT_ROW_ERRORS,
    asyncpg.IntegrityConstraintViolationError,
)


async def write_isolating(conn: newsletters.Executor, rows: Sequence[tuple[str, Row]],
                          ) -> dict[str, str]:
    """Insert (entry id, row) pairs; a row the database rejects is isolated by bisecting
    the batch and reported as {entry id: error}, a `Permanent` one for a DataError; every
    other row is written. The bisection runs once: its permanent failures are
    dead-lettered at once, so they never come back to be bisected again."""
    if not rows:
        return {}
    try:
        await newsletters.insert_batch(conn, [row for _, row in rows])
        return {}
    except ROW_ERRORS as exc:
        if len(rows) == 1:
            error = f"database rejected row: {type(exc).__name__}: {exc}"
            return {rows[0][0]: Permanent(error) if isinstance(exc, PERMANENT_ROW_ERRORS)
                    else error}
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
        try:
            failures.update(await write_isolating(self.pool, rows))
        except DB_UNAVAILABLE as exc:
            raise RetryBatch(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc
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
            # The row keeps the stream id: a user's entries all come from one partition's
            # stream, so their ids order a user's versions of one event.
            rows.append((entry.id, newsletters.row(event, split_ref(entry.id)[1])))
        return rows, failures


async def check_table(pool: asyncpg.Pool) -> None:
    """Fail at start, with the fix, if the schema is missing (not at every batch)."""
    try:
        await newsletters.probe(pool)
    except asyncpg.UndefinedTableError:
        raise SettingsError(
            "table `newsletters` does not exist in LIVEFEED_DATABASE_URL; run `livefeed migrate`"
        ) from None
    except DB_UNAVAILABLE as exc:
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


async def run(settings: Resolved, stopping: anyio.Event, *, name: str | None = None,
              partitions: Sequence[int] | None = None) -> None:
    """The persist role: one consumer until `stopping` is set, then drain. It shares the
    partitions with the group's other consumers through leases, or owns `partitions`."""
    keys = Keys(settings.prefix, partitions=settings.partitions)
    async with consumer_clients(settings) as clients:
        pool = await create_pool(settings.database_url)
        try:
            await check_table(pool)
            runner = GroupRunner.for_role(settings, keys, PERSIST_GROUP, PersistHandler(pool),
                                          clients, name=name, partitions=partitions,
                                          linger=True)
            await runner.run(stopping)
        finally:
            await close_pool(pool)

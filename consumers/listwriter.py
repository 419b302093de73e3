"""The `list` mode's batch writer: the article's design, for comparison only.

Every `interval_ms` (500) the writer empties the List ingest pushes onto, in batches: one
`LMPOP 1 <write buffer> LEFT COUNT <count>` (100) takes the oldest items, one `INSERT ...
SELECT * FROM UNNEST(...) ON CONFLICT (user_id, id) DO NOTHING` writes them, and the next
pop follows at once while the last one came back full. The article names the interval and
the batch size, not a cap on the rate; one pop per tick would cap the writer at 200
newsletters a second and let the List grow without bound under the load it describes.

Faithful including its loss window: LMPOP removes the batch from Redis before the INSERT
commits, and nothing puts it back. A writer killed between the two, or a database that
refuses the INSERT (down, unreachable, a bad row), loses the whole batch; the writer logs
`lost N popped items` and goes on with the next tick. Nothing here fixes that: it is what
`livefeed compare` shows.

The hold file is the deliberate hook for tests and `compare`: while it exists, the writer
logs `popped N items (first id .. last id); holding before the INSERT` after each pop
that took something and waits (until the file is gone, or SIGTERM) before the INSERT, so
a SIGKILL can land in the window on purpose.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec

from livefeed.consumers.persist import close_pool, create_pool
from livefeed.core import newsletters, redis_client
from livefeed.core.errors import DB_ERRORS, REDIS_ERRORS
from livefeed.core.keys import Keys
from livefeed.core.newsletters import Row
from livefeed.core.settings import Resolved
from livefeed.schemas.event import decode_event

logger = logging.getLogger(__name__)

INTERVAL_MS = 500
COUNT = 100
HOLD_POLL_S = 0.02
# Grep-able by tests and `compare`: printed after the pop, before the INSERT.
POPPED = "popped"


class ListWriter:
    """One tick at a time: pop a batch, insert it (or lose it)."""

    def __init__(self, redis: Any, pool: asyncpg.Pool | Any, keys: Keys, *,
                 count: int = COUNT, hold_file: Path | None = None) -> None:
        self.redis = redis
        self.pool = pool
        self.keys = keys
        self.count = count
        self.hold_file = hold_file
        self.written = 0
        self.lost = 0

    async def pop(self) -> list[bytes]:
        """The `LMPOP 1 <list> LEFT COUNT n`: up to `count` items, removed from Redis."""
        reply = await self.redis.execute_command("LMPOP", 1, self.keys.write_buffer, "LEFT",
                                                 "COUNT", self.count)
        return list(reply[1]) if reply else []

    async def tick(self, stopping: anyio.Event | None = None) -> int:
        """One pop and its INSERT; the items popped (0: the List was empty)."""
        items = await self.pop()
        if not items:
            return 0
        rows = _rows(items)
        if self.hold_file is not None and self.hold_file.exists():
            first, last = (str(rows[0].id), str(rows[-1].id)) if rows else ("-", "-")
            logger.warning("list-writer: %s %d items (%s .. %s); holding before the INSERT "
                           "while %s exists", POPPED, len(items), first, last, self.hold_file)
            while self.hold_file.exists() and not (stopping and stopping.is_set()):
                await anyio.sleep(HOLD_POLL_S)
        try:
            self.written += await newsletters.insert_batch_ignore(self.pool, rows)
        except DB_ERRORS as exc:
            # The article's window: the batch left Redis with the LMPOP and is gone.
            self.lost += len(items)
            logger.error("list-writer: lost %d popped items: INSERT failed: %s: %s",
                         len(items), type(exc).__name__, exc)
        return len(items)


def _rows(items: list[bytes]) -> list[Row]:
    rows: list[Row] = []
    for item in items:
        try:
            event = decode_event(item)
        except msgspec.DecodeError as exc:
            logger.error("list-writer: dropping an undecodable item: %s", exc)
            continue
        if event.id is not None:
            rows.append(newsletters.row(event, ""))
    return rows


async def run(settings: Resolved, stopping: anyio.Event, *, name: str | None = None,
              partitions: Sequence[int] | None = None, interval_ms: int = INTERVAL_MS,
              count: int = COUNT, hold_file: Path | None = None) -> None:
    """The list writer role: a tick every `interval_ms` until `stopping` is set. (One List,
    no partitions: `partitions` is taken for the roles' common signature and must be None.)"""
    if partitions is not None:
        raise ValueError("the list writer has no partitions (one List for everything)")
    keys = Keys(settings.prefix, partitions=settings.partitions)
    redis: Any = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster)
    pool = await create_pool(settings.database_url)
    label = name or f"{os.uname().nodename}-{os.getpid()}"
    writer = ListWriter(redis, pool, keys, count=count, hold_file=hold_file)
    logger.info("list-writer %s: LMPOP %s LEFT COUNT %d every %d ms", label,
                keys.write_buffer, count, interval_ms)
    try:
        while not stopping.is_set():
            started = anyio.current_time()
            try:
                # Drain: batch after batch while they come back full.
                while await writer.tick(stopping) >= count and not stopping.is_set():
                    pass
            except REDIS_ERRORS as exc:
                logger.warning("list-writer: LMPOP failed (%s); next tick", exc)
            with anyio.move_on_after(max(0.0, started + interval_ms / 1000
                                         - anyio.current_time())):
                await stopping.wait()
    finally:
        logger.info("list-writer %s: stopped (%d rows written, %d items lost)", label,
                    writer.written, writer.lost)
        await close_pool(pool)
        await redis.aclose()

"""PostgreSQL: the asyncpg pool and idempotent migrations from `schemas/migrations`."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)

# Any constant would do; it serialises concurrent `livefeed migrate` runs.
_MIGRATION_LOCK = 0x6C66_6D69


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **kw: Any
) -> asyncpg.Pool:
    """An asyncpg pool. Unknown DSN query parameters (e.g. `search_path`) become server settings.

    `min_size=0` connects lazily: creating the pool needs no server, each `acquire` connects
    if the pool holds no connection (and fails fast while the server is away), so a process
    that needs the database only for some requests starts and recovers without it.
    """
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, **kw)
    assert pool is not None
    return pool


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration, in order."""
    folder = resources.files("livefeed.schemas") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text()) for name in names]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations in one transaction each; return the names applied.

    Creates the schema named first in `search_path` if it does not exist, so a DSN with
    `?search_path=tenant` works on an empty database.
    """
    schema = await conn.fetchval("SELECT (current_schemas(false))[1]")
    if schema is None:
        wanted = await conn.fetchval("SHOW search_path")
        first = wanted.split(",")[0].strip().strip('"')
        if first and first != "$user":
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{first}"')
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS livefeed_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM livefeed_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO livefeed_migrations (name) VALUES ($1)", name)
            applied.append(name)
            logger.info("applied migration %s", name)
    return applied


async def migrate_dsn(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()

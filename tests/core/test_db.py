from __future__ import annotations

import asyncpg

from livefeed.core import db
from livefeed.ops.namespace import drop_schema, fresh_names, with_search_path


async def test_migrate_is_idempotent_and_creates_its_schema(postgres_url: str) -> None:
    _, schema = fresh_names("lft")
    dsn = with_search_path(postgres_url, schema)
    try:
        assert await db.migrate_dsn(dsn) == ["0001_newsletters.sql"]
        assert await db.migrate_dsn(dsn) == []
        conn = await asyncpg.connect(dsn)
        try:
            cols = {r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = $1 AND table_name = 'newsletters'", schema)}
        finally:
            await conn.close()
        assert {"id", "user_id", "subject", "sender", "category", "received_at", "preview"} <= cols
    finally:
        await drop_schema(postgres_url, schema)

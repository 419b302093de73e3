from __future__ import annotations

import uuid

import asyncpg

from livefeed.core import db
from tests.servers import with_search_path


async def test_migrate_is_idempotent_and_creates_its_schema(postgres_url: str) -> None:
    schema = f"lft_{uuid.uuid4().hex[:12]}"
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
        admin = await asyncpg.connect(postgres_url)
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()

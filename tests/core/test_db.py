from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest

from livefeed.core import db
from livefeed.ops.namespace import drop_schema, fresh_names, with_search_path


async def test_migrate_is_idempotent_and_creates_its_schema(postgres_url: str) -> None:
    _, schema = fresh_names("lft")
    dsn = with_search_path(postgres_url, schema)
    try:
        assert await db.migrate_dsn(dsn) == ["0001_newsletters.sql",
                                             "0002_newsletters_user_scoped_ids.sql"]
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


async def primary_key(conn: asyncpg.Connection) -> list[str]:
    return [r["attname"] for r in await conn.fetch(
        "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) "
        "WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = k.attnum WHERE i.indrelid = 'newsletters'::regclass "
        "AND i.indisprimary ORDER BY k.ord")]


async def test_ids_become_scoped_per_user_on_a_table_with_rows(postgres_url: str) -> None:
    """0002 on a table made by 0001 alone: the rows stay, the key becomes (user_id, id),
    and the same id can then be stored for a second user; the migration reruns as a no-op."""
    schema = f"lft_{uuid.uuid4().hex[:12]}"
    dsn = with_search_path(postgres_url, schema)
    files = dict(db.migration_files())
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(files["0001_newsletters.sql"])
            assert await primary_key(conn) == ["id"]
            await conn.execute(
                "CREATE TABLE livefeed_migrations (name text PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now());"
                "INSERT INTO livefeed_migrations (name) VALUES ('0001_newsletters.sql')")
            eid = uuid.uuid4()
            at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
            insert = ("INSERT INTO newsletters (id, user_id, subject, sender, received_at, "
                      "stream_id) VALUES ($1, $2, 'Hi', 'a@example.com', $3, '1-0')")
            await conn.execute(insert, eid, "alice", at)
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(insert, eid, "bob", at)

            assert await db.migrate(conn) == ["0002_newsletters_user_scoped_ids.sql"]
            assert await primary_key(conn) == ["user_id", "id"]
            await conn.execute(insert, eid, "bob", at)
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(insert, eid, "bob", at)
            await conn.execute(files["0002_newsletters_user_scoped_ids.sql"])  # rerun: no-op
            assert await primary_key(conn) == ["user_id", "id"]
            rows = await conn.fetch("SELECT user_id FROM newsletters WHERE id = $1 "
                                    "ORDER BY user_id", eid)
            assert [r["user_id"] for r in rows] == ["alice", "bob"]
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()

"""Throwaway namespaces: a fresh key prefix and a migrated PostgreSQL schema, both dropped
afterwards. They isolate a test, a benchmark or a `compare` cell on shared servers.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg

from livefeed.core import db, redis_client
from livefeed.core.keys import Keys

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Namespace:
    prefix: str
    schema: str
    database_url: str
    """The base DSN with `search_path` set to `schema`."""


def fresh_names(label: str) -> tuple[str, str]:
    """A new (key prefix, schema) pair sharing one random tag: `<label><tag>`, `<label>_<tag>`."""
    tag = uuid.uuid4().hex[:10]
    return f"{label}{tag}", f"{label}_{tag}"


def with_search_path(dsn: str, schema: str) -> str:
    """`dsn` whose connections use `schema` (asyncpg passes unknown query params as settings)."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query["search_path"] = schema
    return urlunsplit(parts._replace(query=urlencode(query)))


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def drop_keys(redis_url: str, keys: Keys, *, cluster: bool = False) -> None:
    client = redis_client.connect(redis_url, cluster=cluster)
    try:
        await redis_client.delete_keys(client, keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def throwaway_schema(database_url: str, schema: str) -> AsyncIterator[str]:
    """Create `schema` and migrate it; yield a DSN whose connections use it; drop it after.

    CREATE SCHEMA without IF NOT EXISTS: the schema dropped afterwards is one made here.
    """
    conn = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        dsn = with_search_path(database_url, schema)
        await db.migrate_dsn(dsn)
        yield dsn
    finally:
        with anyio.CancelScope(shield=True):
            await drop_schema(database_url, schema)


@contextlib.asynccontextmanager
async def throwaway_namespace(redis_url: str, database_url: str, *, label: str,
                              cluster: bool = False) -> AsyncIterator[Namespace]:
    """A fresh prefix and migrated schema; every key of the prefix and the schema are
    dropped on exit (both attempted even if one fails; cancellation does not skip them)."""
    prefix, schema = fresh_names(label)
    try:
        async with throwaway_schema(database_url, schema) as dsn:
            yield Namespace(prefix=prefix, schema=schema, database_url=dsn)
    finally:
        with anyio.CancelScope(shield=True):
            await drop_keys(redis_url, Keys(prefix), cluster=cluster)

"""The throwaway namespace of tests, bench and compare: made fresh, dropped afterwards."""

from __future__ import annotations

import contextlib

import asyncpg
import pytest

from livefeed.core import redis_client
from livefeed.core.keys import Keys
from livefeed.ops.namespace import throwaway_namespace, with_search_path


def test_with_search_path_sets_or_replaces_the_parameter() -> None:
    assert (with_search_path("postgresql://u@h:5432/db", "s1")
            == "postgresql://u@h:5432/db?search_path=s1")
    assert (with_search_path("postgresql://u@h/db?sslmode=disable&search_path=old", "s2")
            == "postgresql://u@h/db?sslmode=disable&search_path=s2")


async def schemas(postgres_url: str) -> set[str]:
    conn = await asyncpg.connect(postgres_url)
    try:
        return {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
    finally:
        await conn.close()


@pytest.mark.parametrize("fail", [False, True])
async def test_keys_and_schema_are_dropped_afterwards(redis_url: str, postgres_url: str,
                                                      fail: bool) -> None:
    client = redis_client.connect(redis_url)
    try:
        with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
            async with throwaway_namespace(redis_url, postgres_url, label="lft") as ns:
                assert ns.prefix.startswith("lft") and ns.schema == f"lft_{ns.prefix[3:]}"
                conn = await asyncpg.connect(ns.database_url)
                try:  # migrated, and the DSN's connections live in the schema
                    assert await conn.fetchval("SELECT current_schema()") == ns.schema
                    assert await conn.fetchval("SELECT count(*) FROM newsletters") == 0
                finally:
                    await conn.close()
                await client.set(f"{ns.prefix}:probe", 1)
                assert ns.schema in await schemas(postgres_url)
                if fail:
                    raise RuntimeError("the user's block fails")
        assert ns.schema not in await schemas(postgres_url)
        assert [k async for k in client.scan_iter(match=Keys(ns.prefix).patterns()[0])] == []
    finally:
        await client.aclose()


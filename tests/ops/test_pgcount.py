"""The bench's round-trip counter: a proxy that reads the PostgreSQL frontend protocol."""

from __future__ import annotations

import asyncpg
import pytest

from livefeed.ops.bench.pgcount import counting

pytestmark = pytest.mark.anyio


async def test_counts_each_statement_and_round_trip_through_it(postgres_url: str) -> None:
    with counting(postgres_url) as counter:
        conn = await asyncpg.connect(counter.url_for(postgres_url))
        try:
            await conn.execute("SELECT $1::int", 0)  # prepared on first use
            trips, statements = counter.round_trips, counter.statements
            for i in range(10):
                await conn.execute("SELECT $1::int", i)  # Bind, Execute, Sync
            assert (counter.round_trips - trips, counter.statements - statements) == (10, 10)
            async with conn.transaction():  # BEGIN, a simple query, COMMIT
                await conn.execute("SELECT 1")
            assert (counter.round_trips - trips, counter.statements - statements) == (13, 13)
            await conn.fetchval("SELECT $1::text", "x")  # a new statement: + Parse/Flush
            assert counter.round_trips - trips == 15 and counter.statements - statements == 14
        finally:
            await conn.close()

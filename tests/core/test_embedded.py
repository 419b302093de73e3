"""The zero-config servers are real: a real redis-server and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import redis

from livefeed.core.embedded import EmbeddedPostgres, EmbeddedRedis


def test_embedded_redis_keeps_data_across_restarts(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"k": "v"})
        client.close()
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.xlen("s") == 1
        assert client.info("server")["redis_version"].startswith("6.2")
        client.close()


async def test_embedded_postgres_answers(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg") as server:
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

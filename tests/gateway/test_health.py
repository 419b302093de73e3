"""`/readyz` follows Redis (an embedded one this test stops), PostgreSQL and the pub/sub hub."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from livefeed.core.embedded import EmbeddedRedis
from livefeed.core.settings import Settings
from livefeed.gateway import hub
from livefeed.ops.faultproxy import FaultProxy
from tests.helpers.admin import MINE, app_client
from tests.helpers.waiting import eventually


async def test_readyz_turns_unready_when_redis_stops(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    try:
        settings = settings_factory(redis_url=server.url)
        async with app_client(settings, (*MINE, hub.FEATURE)) as (client, _):
            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, what="ready", interval=0.1)  # the hub connects later
            r = await client.get("/readyz")
            assert r.status_code == 200 and r.json() == {
                "ready": True, "failed": [], "degraded": [],
                "checks": {"redis": "ok", "postgres": "ok", "pubsub": "ok"}}

            server.stop()
            r = await client.get("/readyz")
            assert r.status_code == 503
            body = r.json()
            assert "redis" in body["failed"] and body["checks"]["postgres"] == "ok"
            async def pubsub_failed() -> bool:
                return "pubsub" in (await client.get("/readyz")).json()["failed"]

            # the hub notices its link is gone
            await eventually(pubsub_failed, what="pubsub failing", interval=0.1)
            assert (await client.get("/healthz")).status_code == 200  # alive, not ready
    finally:
        server.stop()


async def test_readyz_without_a_hub(settings_factory: Callable[..., Settings]) -> None:
    async with app_client(settings_factory()) as (client, _):
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert r.json()["checks"] == {"redis": "ok", "postgres": "ok"}


async def test_readyz_reports_postgres_cut_off_but_stays_ready(
        settings_factory: Callable[..., Settings], database_url: str) -> None:
    """A gateway of the `streams` mode needs PostgreSQL only for the history: it stays
    ready (a load balancer keeps sending it events) and reports the database degraded."""
    async with FaultProxy.for_url(database_url) as proxy:
        settings = settings_factory(database_url=proxy.url_for(database_url))
        async with app_client(settings) as (client, _):
            assert (await client.get("/readyz")).json()["degraded"] == []
            proxy.cut()
            r = await client.get("/readyz")
            assert r.status_code == 200
            body = r.json()
            assert body["ready"] is True and body["failed"] == []
            assert body["degraded"] == ["postgres"] and body["checks"]["redis"] == "ok"
            assert body["checks"]["postgres"] != "ok"
            proxy.restore()

            async def healthy() -> bool:
                return (await client.get("/readyz")).json()["degraded"] == []

            await eventually(healthy, what="postgres back", interval=0.1)  # reconnects


async def test_readyz_needs_postgres_in_pubsub_mode(
        settings_factory: Callable[..., Settings], database_url: str) -> None:
    """In the `pubsub` mode ingest writes to PostgreSQL: without it the gateway is unready."""
    async with FaultProxy.for_url(database_url) as proxy:
        settings = settings_factory(database_url=proxy.url_for(database_url),
                                    delivery="pubsub")
        async with app_client(settings) as (client, _):
            assert (await client.get("/readyz")).status_code == 200
            proxy.cut()
            r = await client.get("/readyz")
            assert r.status_code == 503
            assert r.json()["failed"] == ["postgres"] and r.json()["degraded"] == []
            proxy.restore()

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(ready, what="ready", interval=0.1)  # the pool reconnects

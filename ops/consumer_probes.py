"""A consumer's HTTP port (`livefeed consumer ... --metrics-port PORT`): `/metrics`, and
the probes `/healthz` (the process serves) and `/readyz` (what its role needs answers).

Readiness follows the role: `persist` reads Redis and writes PostgreSQL, so it needs both;
`fanout` needs Redis only, so a database outage never makes it unready. The answer has the
gateway's shape: `{"ready", "failed", "degraded", "checks"}`, each check bounded by 1 s.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from livefeed.core.probe import CHECK_TIMEOUT_S, postgres_ok, redis_ok
from livefeed.core.settings import Resolved

# What each role needs to do its work.
NEEDS: dict[str, tuple[str, ...]] = {"persist": ("redis", "postgres"), "fanout": ("redis",),
                                     "list-writer": ("redis", "postgres")}


async def _postgres(database_url: str) -> str:
    async def select_one() -> None:  # a connection of its own: the role's pool is not ours
        conn = await asyncpg.connect(database_url, timeout=CHECK_TIMEOUT_S)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    return await postgres_ok(select_one)


def probe_app(settings: Resolved, role: str, redis: Any) -> Starlette:
    """The consumer's HTTP app; `redis` is a client it may ping (the caller closes it)."""
    needs = NEEDS[role]

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        checks = {"redis": await redis_ok(redis)}
        if "postgres" in needs:
            checks["postgres"] = await _postgres(settings.database_url)
        failed = sorted(name for name, result in checks.items() if result != "ok")
        return JSONResponse({"ready": not failed, "failed": failed, "degraded": [],
                             "checks": checks}, status_code=503 if failed else 200)

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz),
                             Route("/readyz", readyz)])

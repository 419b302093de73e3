"""`/healthz`: the process is up; `/readyz`: this gateway can do its work.

`/healthz` touches nothing: it must answer even when every dependency is down, so a
restart is never triggered by Redis being away.

`/readyz` checks every dependency and reports each, but is ready when what the gateway's
role needs answers: Redis and the pub/sub link (ingest, live delivery). PostgreSQL serves
only the history (`/v1/feed`, which answers 503 meanwhile): its failure is reported under
`degraded`, and a load balancer keeps sending events and clients to the gateway. In the
`pubsub` delivery mode ingest writes to PostgreSQL, so there it is needed too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from livefeed.core.probe import CHECK_TIMEOUT_S, postgres_ok, redis_ok
from livefeed.gateway.feature import Feature
from livefeed.gateway.operation import Answer, Operation
from livefeed.gateway.state import GatewayState
from livefeed.schemas.http import Health, Readiness


async def _redis(state: GatewayState) -> str:
    return await redis_ok(state.redis)


async def _postgres(state: GatewayState) -> str:
    async def select_one() -> None:
        async with state.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    return await postgres_ok(select_one)


def _hub(state: GatewayState) -> str | None:
    if state.hub is None:
        return None
    return "ok" if state.hub.healthy else "pub/sub link down (reconnecting)"


def _json(body: Health | Readiness, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status,
                    media_type="application/json")


async def healthz(request: Request) -> Response:
    return _json(Health(status="ok"))


async def readyz(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    checks: dict[str, str] = {}

    async def run(name: str, check: Callable[[GatewayState], Awaitable[str]]) -> None:
        checks[name] = await check(state)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "redis", _redis)
        tg.start_soon(run, "postgres", _postgres)
    hub = _hub(state)
    if hub is not None:
        checks["pubsub"] = hub
    needs = needed(state, checks)
    failed = sorted(name for name in needs if checks[name] != "ok")
    degraded = sorted(name for name, result in checks.items()
                      if result != "ok" and name not in needs)
    return _json(Readiness(ready=not failed, failed=failed, degraded=degraded, checks=checks),
                 status=503 if failed else 200)


def needed(state: GatewayState, checks: dict[str, str]) -> list[str]:
    """The checks readiness depends on: all but PostgreSQL, unless ingest writes to it."""
    return [name for name in checks
            if name != "postgres" or state.settings.delivery == "pubsub"]


def routes() -> list[BaseRoute]:
    return [Route("/healthz", healthz), Route("/readyz", readyz)]


OPERATIONS = (
    Operation("GET", "/healthz", "getHealthz", "The process serves", "monitoring",
              description="Touches nothing: it answers even when Redis and PostgreSQL are "
                          "down, so a liveness probe never restarts a gateway for them.",
              responses={200: Answer("Always, while the process serves", Health)}),
    Operation("GET", "/readyz", "getReadyz", "This gateway can do its work", "monitoring",
              description=f"Redis and PostgreSQL answer (each check bounded by "
                          f"{CHECK_TIMEOUT_S:g} s) and the pub/sub link is alive.",
              responses={200: Answer("Ready", Readiness),
                         503: Answer("Not ready: `failed` names the checks", Readiness)}),
)

FEATURE = Feature("health", routes, operations=OPERATIONS)

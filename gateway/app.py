"""The gateway application factory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from core import db, redis_client
from core.eventlog import EventLog
from core.keys import Keys
from core.settings import Settings
from gateway.state import GatewayState

logger = logging.getLogger(__name__)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def routes() -> list[BaseRoute]:
    # Each feature module owns its routes; this is the one place they are put together.
    out: list[BaseRoute] = [Route("/healthz", healthz)]
    return out


def create_app(settings: Settings) -> Starlette:
    """The gateway for `settings`; Redis and PostgreSQL URLs must be resolved already."""
    if settings.redis_url is None or settings.database_url is None:
        raise ValueError("create_app needs resolved redis_url and database_url")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        assert settings.redis_url is not None and settings.database_url is not None
        keys = Keys(settings.prefix, cluster=settings.redis_cluster)
        redis = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster)
        pool = await db.create_pool(settings.database_url)
        try:
            state = GatewayState(
                settings=settings,
                keys=keys,
                redis=redis,
                pool=pool,
                log=EventLog(
                    redis, keys, feed_maxlen=settings.feed_maxlen,
                    dedupe_ttl_s=settings.dedupe_ttl_s,
                ),
                signing_secret=settings.signing_secret(),
            )
            app.state.lf = state
            yield {}
        finally:
            await pool.close()
            await redis.aclose()

    return Starlette(routes=routes(), lifespan=lifespan)

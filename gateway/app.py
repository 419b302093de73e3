"""The gateway application factory.

Each feature module owns its routes (`routes() -> list[BaseRoute]`) and, if it holds
resources, a `lifespan(state)` async context manager; this is the one place they are put
together, in FEATURES order.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Sequence
from types import ModuleType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from livefeed.core import db, redis_client
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.core.secretfile import signing_secret
from livefeed.core.settings import Resolved
from livefeed.gateway.state import GatewayState

logger = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = tuple(
    f"livefeed.gateway.{name}"
    for name in ("ingest", "hub", "ws", "sse", "history", "page", "admin", "metrics", "health")
)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _load(names: Sequence[str]) -> list[ModuleType]:
    return [importlib.import_module(name) for name in names]


def create_app(settings: Resolved, features: Sequence[str] = FEATURES) -> Starlette:
    """The gateway for `settings` (`Settings.resolve()` them first).
    `features`: the feature modules to plug in (tests serve a subset)."""
    modules = _load(features)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        keys = Keys(settings.prefix, partitions=settings.partitions)
        redis = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(redis.aclose)
            pool = await db.create_pool(settings.database_url)
            stack.push_async_callback(pool.close)
            state = GatewayState(
                settings=settings,
                keys=keys,
                redis=redis,
                pool=pool,
                log=EventLog(redis, keys, feed_maxlen=settings.feed_maxlen,
                             dedupe_ttl_s=settings.dedupe_ttl_s,
                             cluster=settings.redis_cluster,
                             replicas=settings.ingest_replicas),
                signing_secret=signing_secret(settings),
            )
            app.state.lf = state
            for feature in modules:
                if hasattr(feature, "lifespan"):
                    await stack.enter_async_context(feature.lifespan(state))
            yield {}
            state.draining.set()

    routes: list[BaseRoute] = [Route("/healthz", healthz)]
    for feature in modules:
        if hasattr(feature, "routes"):
            routes += feature.routes()
    return Starlette(routes=routes, lifespan=lifespan)

"""The gateway application factory.

Each feature module defines its `FEATURE` (gateway/feature.py): its routes and, if it holds
resources, a lifespan; this is the one place they are put together, in order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from livefeed.core import db, redis_client
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.core.secretfile import previous_secret, signing_secret
from livefeed.core.settings import Resolved
from livefeed.gateway import (
    admin,
    health,
    history,
    hub,
    ingest,
    metrics,
    page,
    sse,
    tickets,
    ws,
)
from livefeed.gateway.feature import Feature
from livefeed.gateway.state import GatewayState

logger = logging.getLogger(__name__)

DEFAULT_FEATURES: tuple[Feature, ...] = (
    ingest.FEATURE, hub.FEATURE, ws.FEATURE, sse.FEATURE, tickets.FEATURE, history.FEATURE,
    page.FEATURE, admin.FEATURE, metrics.FEATURE, health.FEATURE,
)


def create_app(settings: Resolved, features: Sequence[Feature] = DEFAULT_FEATURES) -> Starlette:
    """The gateway for `settings` (`Settings.resolve()` them first).
    `features`: the parts to plug in (tests serve a subset), with the ones they need."""
    for feature in features:
        missing = [need.name for need in feature.needs if need not in features]
        if missing:
            raise ValueError(f"the gateway feature {feature.name!r} needs "
                             f"{', '.join(missing)}: add it to `features`")

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
                previous_secret=previous_secret(settings),
            )
            app.state.lf = state
            for feature in features:
                if feature.lifespan is not None:
                    await stack.enter_async_context(feature.lifespan(state))
            yield {}
            state.draining.set()

    routes: list[BaseRoute] = []
    for feature in features:
        routes += feature.routes()
    return Starlette(routes=routes, lifespan=lifespan)

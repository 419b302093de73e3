"""`/metrics`: Prometheus exposition of this process's metrics (core/metrics.py), with the
stream figures (lengths, group lag and pending) read from Redis at scrape time.

The Redis read is cached for `CACHE_S`, so several scrapers (or a fast one) cost Redis
one round of XINFO per interval, not one per scrape.

Not public: a scrape needs `Authorization: Bearer` with `LIVEFEED_METRICS_TOKEN` (what
Prometheus is given) or an admin token; 401 without, 403 with a user's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth, metrics
from livefeed.core.errors import REDIS_ERRORS
from livefeed.core.status import Status, total_groups
from livefeed.gateway.bearer import bearer_token
from livefeed.gateway.feature import Feature
from livefeed.gateway.operation import ADMIN, Answer, Operation
from livefeed.gateway.state import GatewayState
from livefeed.schemas.http import ErrorBody

logger = logging.getLogger(__name__)

CACHE_S = 2.0
READ_TIMEOUT_S = 2.0


class StreamFigures:
    """Refreshes the stream gauges from Redis at most once per `cache_s`."""

    def __init__(self, inspector: Status, cache_s: float = CACHE_S) -> None:
        self.inspector = inspector
        self.cache_s = cache_s
        self._lock = anyio.Lock()
        self._at: float | None = None

    async def refresh(self) -> None:
        async with self._lock:
            now = anyio.current_time()
            if self._at is not None and now - self._at < self.cache_s:
                return
            self._at = now
            try:
                with anyio.fail_after(READ_TIMEOUT_S):
                    await self._read()
            except REDIS_ERRORS as exc:
                metrics.SCRAPE_REDIS_ERRORS.inc()
                logger.warning("metrics: cannot read stream figures from Redis: %r", exc)

    async def _read(self) -> None:
        ins = self.inspector
        keys = ins.keys
        now = await ins.now_ms()
        pipe = ins.redis.pipeline(transaction=False)
        for key in (*keys.ingests, *keys.deads):
            pipe.xlen(key)
        lengths = [int(n) for n in await pipe.execute()]
        per_partition = await ins.partition_groups(now)
        groups = total_groups(per_partition)
        metrics.STREAM_LENGTH.labels("ingest").set(sum(lengths[: keys.count]))
        metrics.STREAM_LENGTH.labels("dead").set(sum(lengths[keys.count :]))
        # Groups can disappear (XGROUP DESTROY): start from no series, not stale ones.
        for gauge in (metrics.GROUP_LAG, metrics.GROUP_PENDING, metrics.GROUP_CONSUMERS,
                      metrics.GROUP_OLDEST_PENDING, metrics.PARTITION_LAG,
                      metrics.PARTITION_PENDING):
            gauge.clear()
        for p, part in enumerate(per_partition):
            for g in part:
                if g.lag is not None:
                    metrics.PARTITION_LAG.labels(g.name, str(p)).set(g.lag)
                metrics.PARTITION_PENDING.labels(g.name, str(p)).set(g.pending)
        for g in groups:
            if g.lag is not None:
                metrics.GROUP_LAG.labels(g.name).set(g.lag)
            metrics.GROUP_PENDING.labels(g.name).set(g.pending)
            metrics.GROUP_CONSUMERS.labels(g.name).set(len(g.consumers))
            age = g.oldest_pending_age_ms
            metrics.GROUP_OLDEST_PENDING.labels(g.name).set(age / 1000 if age else 0)


@contextlib.asynccontextmanager
async def lifespan(state: GatewayState) -> AsyncIterator[None]:
    state.stream_figures = StreamFigures(Status(state.redis, state.keys))
    yield


def process_figures(state: GatewayState) -> None:
    """The gauges that show leaks: tasks, sessions, hub channels and listeners."""
    metrics.GATEWAY_TASKS.set(len(asyncio.all_tasks()))
    if state.sessions is not None:
        metrics.GATEWAY_SESSIONS.set(len(state.sessions))
    if state.hub is not None:
        metrics.HUB_CHANNELS.set(state.hub.channels())
        metrics.HUB_LISTENERS.set(state.hub.listeners())


def refused(state: GatewayState, request: Request) -> Response | None:
    """None if the request may scrape, else the answer (401 or 403)."""
    token = bearer_token(request.headers)
    wanted = state.settings.metrics_token
    if token is not None and wanted and hmac.compare_digest(token.encode(), wanted.encode()):
        return None
    try:
        claims = state.verify(token)
    except auth.InvalidToken:
        return Response('{"error": "metrics need Authorization: Bearer with '
                        'LIVEFEED_METRICS_TOKEN or an admin token"}', status_code=401,
                        media_type="application/json", headers={"www-authenticate": "Bearer"})
    if not claims.admin:
        return Response('{"error": "this token is not an admin token"}', status_code=403,
                        media_type="application/json")
    return None


async def metrics_endpoint(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    refusal = refused(state, request)
    if refusal is not None:
        return refusal
    if state.stream_figures is not None:
        await state.stream_figures.refresh()
    process_figures(state)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics_endpoint)]


OPERATIONS = (
    Operation("GET", "/metrics", "getMetrics", "Prometheus metrics of this process",
              "monitoring",
              description=f"The stream figures (lengths, group lag and pending) are read "
                          f"from Redis at scrape time, at most once per {CACHE_S:g} s.",
              security=ADMIN,
              responses={
                  200: Answer("Prometheus text exposition", media_type="text/plain"),
                  401: Answer("No valid bearer token: LIVEFEED_METRICS_TOKEN (what "
                              "Prometheus is given) or an admin token", ErrorBody),
                  403: Answer("A user's token, not an admin's", ErrorBody),
              }),
)

FEATURE = Feature("metrics", routes, lifespan, operations=OPERATIONS)

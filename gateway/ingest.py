"""`POST /v1/events`: webhooks in, validated, appended to the ingest stream in one round trip.

Only a 202 means accepted, and accepted means in the ingest stream: the append is one
atomic, idempotent script, so on a 503 nothing is half-accepted and a retry is safe.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import msgspec
import redis.exceptions
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth, metrics
from livefeed.gateway.feature import Feature
from livefeed.gateway.state import GatewayState
from livefeed.schemas.event import (
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    Event,
    decode_ingest_body,
    encode_event,
)
from livefeed.schemas.frames import event_frame

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)
DB_DOWN = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
           asyncpg.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError,
           asyncpg.InsufficientResourcesError)
# The naive baseline's single-row insert (`pubsub` mode has no stream id).
INSERT_ONE = (
    "INSERT INTO newsletters (id, user_id, subject, sender, category, received_at, preview, "
    "stream_id) VALUES ($1, $2, $3, $4, $5, $6, $7, '') ON CONFLICT (id) DO NOTHING"
)
_PATH = re.compile(r" - at `(\$[^`]*)`$")


class Accepted(msgspec.Struct, frozen=True):
    ids: list[str]
    accepted: list[str]
    duplicates: list[str]


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    error: str
    detail: str
    path: str | None = None


_encoder = msgspec.json.Encoder()


def _reply(status: int, body: Accepted | Problem, headers: dict[str, str] | None = None,
           ) -> Response:
    metrics.INGEST_REQUESTS.labels(str(status)).inc()
    return Response(_encoder.encode(body), status_code=status, headers=headers,
                    media_type="application/json")


def _reject(status: int, error: str, detail: str, path: str | None = None,
            events: int = 1) -> Response:
    metrics.INGEST_EVENTS.labels("rejected").inc(events)
    return _reply(status, Problem(error, detail, path))


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes (whatever Content-Length said)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def authorized(state: GatewayState, request: Request, body: bytes) -> bool:
    secret = state.settings.webhook_secret
    signature = request.headers.get(auth.SIGNATURE_HEADER)
    if secret and signature is not None and auth.check_body_signature(secret, body, signature):
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        return auth.verify(state.signing_secret, token.strip()).admin
    except auth.InvalidToken:
        return False


async def ingest(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    try:
        body = await read_capped(request, MAX_BODY_BYTES)
    except ClientDisconnect:
        return _reply(400, Problem("disconnected", "the client went away mid-body"))
    if body is None:
        return _reject(413, "too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    if not authorized(state, request, body):
        return _reject(401, "unauthorized", "sign the body (X-Livefeed-Signature: "
                       "sha256=<hex HMAC>) or send an admin bearer token")
    try:
        events = decode_ingest_body(body)
    except msgspec.ValidationError as exc:
        match = _PATH.search(str(exc))
        return _reject(422, "invalid", str(exc), match.group(1) if match else None)
    except msgspec.DecodeError as exc:
        return _reject(400, "not_json", str(exc))
    if not events:
        return _reject(422, "invalid", "no events in the body", "$")
    if len(events) > MAX_BATCH_EVENTS:
        return _reject(413, "too_many", f"at most {MAX_BATCH_EVENTS} events per request",
                       events=len(events))
    events = [e.with_id() for e in events]
    if state.settings.delivery == "pubsub":
        return await _ingest_pubsub(state, events)
    triples = [(str(e.id), e.user_id, encode_event(e)) for e in events]
    try:
        appended = await state.log.append(triples)
    except REDIS_ERRORS as exc:
        logger.warning("ingest: Redis unavailable (%s); answering 503", exc)
        return _unavailable("Redis")
    return _accepted([a.event_id for a in appended],
                     [a.event_id for a in appended if a.stream_id is not None])


def _accepted(ids: list[str], new: list[str]) -> Response:
    fresh = set(new)
    duplicates = [i for i in ids if i not in fresh]
    metrics.INGEST_EVENTS.labels("accepted").inc(len(new))
    metrics.INGEST_EVENTS.labels("duplicate").inc(len(duplicates))
    return _reply(202, Accepted(ids=ids, accepted=new, duplicates=duplicates))


def _unavailable(what: str) -> Response:
    return _reply(503, Problem("unavailable", f"{what} cannot take events now; retry"),
                  headers={"Retry-After": str(RETRY_AFTER_S)})


async def _ingest_pubsub(state: GatewayState, events: list[Event]) -> Response:
    """The naive design `compare` measures: one INSERT per event, then a bare PUBLISH."""
    new: list[str] = []
    try:
        async with state.pool.acquire() as conn:
            for e in events:
                status = await conn.execute(INSERT_ONE, e.id, e.user_id, e.subject, e.sender,
                                            e.category, e.received_at, e.preview)
                if status.endswith(" 1"):
                    new.append(str(e.id))
    except DB_DOWN as exc:
        logger.warning("ingest (pubsub): PostgreSQL unavailable (%s); answering 503", exc)
        return _unavailable("PostgreSQL")
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        return _reject(422, "rejected", f"the database refused an event: {exc}")
    try:
        pipe: Any = state.redis.pipeline(transaction=False)
        for e in events:
            pipe.publish(state.keys.live(e.user_id), event_frame(str(e.id), encode_event(e)))
        await pipe.execute()
    except REDIS_ERRORS as exc:
        logger.warning("ingest (pubsub): publish failed (%s); answering 503", exc)
        return _unavailable("Redis")
    return _accepted([str(e.id) for e in events], new)


def routes() -> list[BaseRoute]:
    return [Route("/v1/events", ingest, methods=["POST"])]


FEATURE = Feature("ingest", routes)

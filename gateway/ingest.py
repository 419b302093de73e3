"""`POST /v1/events`: webhooks in, validated, appended to the ingest stream in one round trip.

Only a 202 means accepted, and accepted means in the ingest stream: the append is one
atomic, idempotent script, so on a 503 nothing is half-accepted and a retry is safe.

An event is named by (user_id, id): ids are scoped per user. For LIVEFEED_DEDUPE_TTL after
its acceptance, the same event again (in the same request or a later one) is a duplicate;
the same name with another content is a 409 `conflict` for the whole request, which then
appends nothing. After that window a reuse is a new version of the event: accepted,
delivered live, and it replaces the stored row (`core.newsletters`), so the answer, the
feed and the history agree on the newest content.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

import asyncpg
import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth, metrics, newsletters
from livefeed.core.errors import DB_UNAVAILABLE, REDIS_ERRORS
from livefeed.core.eventlog import IdConflict, NotReplicated
from livefeed.gateway.bearer import QUERY_TOKEN_REFUSED, bearer_token
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
from livefeed.schemas.http import Accepted, Problem
from livefeed.schemas.stream import IngestEntry

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
_PATH = re.compile(r" - at `(\$[^`]*)`$")


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


def refusal(state: GatewayState, request: Request, body: bytes) -> str | None:
    """None if the request may post (a valid webhook signature, or an admin bearer token),
    else why not."""
    if "token" in request.query_params:
        return QUERY_TOKEN_REFUSED
    settings = state.settings
    signature = request.headers.get(auth.SIGNATURE_HEADER)
    why = "sign the body (X-Livefeed-Timestamp, X-Livefeed-Signature: v1=<hex HMAC>) or " \
          "send an admin bearer token"
    if settings.webhook_secret and signature is not None:
        why = auth.check_signature(
            settings.webhook_secret, body, signature, request.headers.get(auth.TIMESTAMP_HEADER),
            tolerance_s=settings.signature_tolerance_s,
            allow_untimed=settings.allow_untimed_signatures,
        ) or ""
        if not why:
            return None
    token = bearer_token(request.headers)
    if token is None:
        return why
    try:
        if state.verify(token).admin:
            return None
        return "a user token cannot post: use an admin token or a webhook signature"
    except auth.InvalidToken as exc:
        return f"bad admin token: {exc}"


async def ingest(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    try:
        body = await read_capped(request, MAX_BODY_BYTES)
    except ClientDisconnect:
        return _reply(400, Problem("disconnected", "the client went away mid-body"))
    if body is None:
        return _reject(413, "too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    if (why := refusal(state, request, body)) is not None:
        return _reject(401, "unauthorized", why)
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
    try:
        if state.settings.delivery == "pubsub":
            return await _ingest_pubsub(state, events)
        try:
            appended = await state.log.append([IngestEntry.of(e) for e in events])
        except NotReplicated as exc:
            logger.warning("ingest: %s; answering 503", exc)
            return _unavailable("Redis (replication)")
        except REDIS_ERRORS as exc:
            logger.warning("ingest: Redis unavailable (%s); answering 503", exc)
            return _unavailable("Redis")
    except IdConflict as exc:
        path = f"$[{exc.index}].id" if body.lstrip().startswith(b"[") else "$.id"
        return _reject(409, "conflict", f"{exc}: an id names one event of its user; resend "
                       "the same content to retry, or use a new id", path, events=len(events))
    return _accepted([(a.event_id, a.stream_id is not None) for a in appended])


def _accepted(outcomes: list[tuple[str, bool]]) -> Response:
    """202 for (event id, new?) per event in request order; not new is a duplicate."""
    ids = [i for i, _ in outcomes]
    new = [i for i, fresh in outcomes if fresh]
    duplicates = [i for i, fresh in outcomes if not fresh]
    metrics.INGEST_EVENTS.labels("accepted").inc(len(new))
    metrics.INGEST_EVENTS.labels("duplicate").inc(len(duplicates))
    return _reply(202, Accepted(ids=ids, accepted=new, duplicates=duplicates))


def _unavailable(what: str) -> Response:
    return _reply(503, Problem("unavailable", f"{what} cannot take events now; retry"),
                  headers={"Retry-After": str(RETRY_AFTER_S)})


async def _ingest_pubsub(state: GatewayState, events: list[Event]) -> Response:
    """The naive design `compare` measures: one INSERT per event, then a bare PUBLISH.

    The row is the dedupe marker, for ever: a stored (user, id) is a duplicate, or with
    another content an IdConflict that rolls the request's inserts back (a request of
    several events is one transaction for that).
    """
    outcomes: list[tuple[str, bool]] = []
    try:
        async with state.pool.acquire() as conn:
            atomic = conn.transaction() if len(events) > 1 else contextlib.nullcontext()
            async with atomic:
                for i, e in enumerate(events):
                    row = newsletters.row(e, "")
                    fresh = await newsletters.insert_one(conn, row)
                    if not fresh and await newsletters.same_content(conn, row) is False:
                        earlier = any((p.id, p.user_id) == (e.id, e.user_id)
                                      for p in events[:i])
                        raise IdConflict(i, str(e.id), e.user_id, earlier=earlier)
                    outcomes.append((str(e.id), fresh))
    except DB_UNAVAILABLE as exc:
        logger.warning("ingest (pubsub): PostgreSQL unavailable (%s); answering 503", exc)
        return _unavailable("PostgreSQL")
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        return _reject(422, "rejected", f"the database refused an event: {exc}")
    try:
        pipe: Any = state.redis.pipeline(transaction=False)
        for e in events:
            frame = event_frame(str(e.id), encode_event(e))
            if state.settings.redis_cluster:  # the gateways SSUBSCRIBE on a cluster
                pipe.spublish(state.keys.live(e.user_id), frame)
            else:
                pipe.publish(state.keys.live(e.user_id), frame)
        await pipe.execute()
    except REDIS_ERRORS as exc:
        logger.warning("ingest (pubsub): publish failed (%s); answering 503", exc)
        return _unavailable("Redis")
    return _accepted(outcomes)


def routes() -> list[BaseRoute]:
    return [Route("/v1/events", ingest, methods=["POST"])]


FEATURE = Feature("ingest", routes)

"""`GET /v1/feed?before=..&limit=..` (token as `Authorization: Bearer`): a user's persisted
newsletters, newest first.

Keyset pagination on (received_at, id): `next` is an opaque cursor for `before`, null on
the last page. Served from PostgreSQL, so it holds everything ever persisted, however far
the bounded feed stream was trimmed (a `reset` frame sends clients here).
"""

from __future__ import annotations

import base64
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth, newsletters
from livefeed.core.errors import DB_ERRORS
from livefeed.core.numbers import parse_int
from livefeed.gateway.bearer import authenticate
from livefeed.gateway.feature import Feature
from livefeed.gateway.operation import USER, Answer, Operation, Param
from livefeed.gateway.state import GatewayState
from livefeed.schemas.http import ErrorBody, HistoryItem, HistoryPage

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
RETRY_AFTER_S = 5


class Cursor(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    # With an offset: `next` cursors carry PostgreSQL's UTC times.
    received_at: Annotated[datetime, msgspec.Meta(tz=True)]
    id: uuid.UUID


_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(Cursor)


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(cursor)).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Raises ValueError for anything that is not a cursor this module wrote."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _cursor_decoder.decode(raw)
        # In UTC, as written; a time whose offset takes it past year 1 or 9999 is no cursor.
        return Cursor(cursor.received_at.astimezone(UTC), cursor.id)
    except (ValueError, OverflowError, msgspec.DecodeError) as exc:
        # ValueError: binascii.Error, non-ASCII text
        raise ValueError("bad cursor") from exc


async def read_page(pool: asyncpg.Pool, user: str, before: Cursor | None, limit: int,
                    ) -> HistoryPage:
    keyset = None if before is None else (before.received_at, before.id)
    rows = await newsletters.read_page(pool, user, keyset, limit + 1)
    items = [HistoryItem(**dict(r)) for r in rows[:limit]]
    nxt = None
    if len(rows) > limit:
        last = items[-1]
        nxt = encode_cursor(Cursor(last.received_at, last.id))
    return HistoryPage(items, nxt)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def feed(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    try:
        claims = authenticate(request)
    except auth.InvalidToken as exc:
        return _error(401, f"bad or expired token: {exc}")
    before = None
    if raw := request.query_params.get("before"):
        try:
            before = decode_cursor(raw)
        except ValueError:
            return _error(400, "before: not a cursor from a previous `next`")
    try:
        limit = parse_int(request.query_params.get("limit", str(DEFAULT_LIMIT)), 1, MAX_LIMIT,
                          "limit")
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        page = await read_page(state.pool, claims.user, before, limit)
    except DB_ERRORS as exc:
        logger.warning("history: PostgreSQL failed (%s: %s); answering 503",
                       type(exc).__name__, exc)
        return JSONResponse({"error": "history unavailable: PostgreSQL does not answer; retry"},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    return Response(_encoder.encode(page), media_type="application/json")


def routes() -> list[BaseRoute]:
    return [Route("/v1/feed", feed)]


OPERATIONS = (
    Operation(
        "GET", "/v1/feed", "getFeed", "The user's persisted newsletters, newest first",
        "history",
        description="From PostgreSQL, so everything ever persisted, however far the live "
        "feed was trimmed (a `reset` frame sends clients here). Ordered by `received_at`, "
        "then `id`; page on with `before` set to the previous page's `next`.",
        params=(
            Param("before", "query", "the `next` cursor of the previous page (opaque)"),
            Param("limit", "query", f"items per page (default {DEFAULT_LIMIT})",
                  Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]),
        ),
        security=USER,
        responses={
            200: Answer("One page; `next` is null on the last one", HistoryPage),
            400: Answer("`before` is not a cursor from `next`, or a bad `limit`", ErrorBody),
            401: Answer("A missing, bad or expired token", ErrorBody),
            503: Answer("PostgreSQL does not answer: retry after `Retry-After` seconds",
                        ErrorBody, headers=(Param("Retry-After", "header", "seconds"),)),
        }),
)

FEATURE = Feature("history", routes, operations=OPERATIONS)

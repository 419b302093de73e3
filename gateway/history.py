"""`GET /v1/feed?before=..&limit=..` (token as `Authorization: Bearer`): a user's persisted
newsletters, newest first.

Keyset pagination on (received_at, id): `next` is an opaque cursor for `before`, null on
the last page. Served from PostgreSQL, so it holds everything ever persisted, however far
the bounded feed stream was trimmed (a `reset` frame sends clients here).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth, newsletters
from livefeed.gateway.bearer import authenticate
from livefeed.gateway.feature import Feature
from livefeed.gateway.state import GatewayState
from livefeed.schemas.http import HistoryItem, HistoryPage

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    received_at: datetime
    id: uuid.UUID


_encoder = msgspec.json.Encoder()
_cursor_decoder = msgspec.json.Decoder(Cursor)

def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(cursor)).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Raises ValueError for anything that is not a cursor this module wrote."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return _cursor_decoder.decode(raw)
    except (binascii.Error, msgspec.DecodeError) as exc:
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
        limit = int(request.query_params.get("limit", DEFAULT_LIMIT))
    except ValueError:
        return _error(400, "limit: expected an integer")
    if not 1 <= limit <= MAX_LIMIT:
        return _error(400, f"limit: between 1 and {MAX_LIMIT}")
    page = await read_page(state.pool, claims.user, before, limit)
    return Response(_encoder.encode(page), media_type="application/json")


def routes() -> list[BaseRoute]:
    return [Route("/v1/feed", feed)]


FEATURE = Feature("history", routes)

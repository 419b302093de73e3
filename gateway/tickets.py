"""`POST /v1/tickets`: a short-lived, single-use ticket to open an SSE stream with.

`EventSource` cannot set headers, and a token in the URL would be logged along the way;
so a browser trades its token (`Authorization: Bearer`) for a ticket, valid
`TICKET_TTL_S` seconds, redeemed once (GETDEL) by `GET /v1/sse?ticket=`. The ticket
carries the token's user and `exp`, so the stream still ends when the token expires.
"""

from __future__ import annotations

import secrets

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth
from livefeed.core.errors import REDIS_ERRORS
from livefeed.gateway.bearer import authenticate
from livefeed.gateway.feature import Feature
from livefeed.gateway.state import GatewayState

TICKET_TTL_S = 30
_MAX_TICKET_CHARS = 100
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(auth.Claims).decode


async def issue(state: GatewayState, claims: auth.Claims) -> str:
    ticket = secrets.token_urlsafe(24)
    await state.redis.set(state.keys.ticket(ticket), _encode(claims), ex=TICKET_TTL_S)
    return ticket


async def redeem(state: GatewayState, ticket: str | None) -> auth.Claims:
    """The claims a ticket was issued for, once; raises auth.InvalidToken for a missing,
    unknown, used or expired ticket, or one whose token expired meanwhile."""
    if not ticket or len(ticket) > _MAX_TICKET_CHARS:
        raise auth.InvalidToken("missing ticket")
    raw = await state.redis.getdel(state.keys.ticket(ticket))
    if raw is None:
        raise auth.InvalidToken("unknown, used or expired ticket")
    try:
        return _decode(raw)
    except msgspec.DecodeError:
        raise auth.InvalidToken("unreadable ticket") from None


async def create(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    try:
        claims = authenticate(request)
    except auth.InvalidToken as exc:
        return JSONResponse({"error": f"bad or expired token: {exc}"}, status_code=401,
                            headers={"www-authenticate": "Bearer"})
    try:
        ticket = await issue(state, claims)
    except REDIS_ERRORS:
        return JSONResponse({"error": "Redis unavailable: retry"}, status_code=503,
                            headers={"retry-after": "1"})
    return JSONResponse({"ticket": ticket, "expires_in": TICKET_TTL_S},
                        headers={"cache-control": "no-store"})


def routes() -> list[BaseRoute]:
    return [Route("/v1/tickets", create, methods=["POST"])]


FEATURE = Feature("tickets", routes)

"""The admin API (`/admin/api/...`, JSON) and the `/admin` page, behind an admin token.

The views are the operator CLI's (`core.status`, `core.pending`, `core.deadletters`), so
`livefeed status --json` and `GET /admin/api/status` answer the same thing.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth
from livefeed.core.deadletters import DeadLetters
from livefeed.core.durations import parse_duration_ms
from livefeed.core.pending import Pending, PendingError
from livefeed.core.status import Status
from livefeed.gateway.bearer import authenticate
from livefeed.gateway.feature import Feature
from livefeed.gateway.state import GatewayState
from livefeed.schemas.admin import ClaimRequest, DeadRequest, GatewayView

STATIC = Path(__file__).parent / "static"
_json = msgspec.json.Encoder()
MAX_LIMIT = 10_000

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


def json_response(value: object, status: int = 200) -> Response:
    return Response(_json.encode(value), status_code=status, media_type="application/json")


def error(status: int, message: str) -> Response:
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return Response(_json.encode({"error": message}), status_code=status,
                    media_type="application/json", headers=headers)


def admin_only(handler: Handler) -> Handler:
    """401 without a valid token in the Authorization header (a `?token=` is refused: a
    cross-site form could send that one), 403 with a valid token that is not an admin's."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        try:
            claims = authenticate(request)
        except auth.InvalidToken as exc:
            return error(401, f"admin token required: {exc}")
        if not claims.admin:
            return error(403, "this token is not an admin token (`livefeed token NAME --admin`)")
        return await handler(request)

    return guarded


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.lf
    return state


def _status(request: Request) -> Status:
    state = _state(request)
    return Status(state.redis, state.keys)


def _pending(request: Request) -> Pending:
    state = _state(request)
    return Pending(state.redis, state.keys)


def _dead(request: Request) -> DeadLetters:
    state = _state(request)
    return DeadLetters(state.redis, state.keys, state.log)


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    value = int(raw)  # ValueError -> 400 in `_bad_input`
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"limit must be within 1..{MAX_LIMIT}")
    return value


def _bad_input(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except PendingError as exc:
            return error(404, str(exc))
        except (ValueError, msgspec.ValidationError) as exc:
            return error(400, str(exc))

    return wrapped


async def _body(request: Request, kind: type[T]) -> T:
    raw = await request.body()
    try:
        return msgspec.json.decode(raw or b"{}", type=kind)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ValueError(f"bad request body: {exc}") from None


@admin_only
async def api_status(request: Request) -> Response:
    return json_response(await _status(request).status())


@admin_only
@_bad_input
async def api_pending(request: Request) -> Response:
    q = request.query_params
    view = await _pending(request).view(
        group=q.get("group") or None, consumer=q.get("consumer") or None,
        min_idle_ms=parse_duration_ms(q["min_idle"]) if q.get("min_idle") else 0,
        limit=_limit(request, 100),
    )
    return json_response(view)


@admin_only
@_bad_input
async def api_claim(request: Request) -> Response:
    body = await _body(request, ClaimRequest)
    if not 1 <= body.limit <= MAX_LIMIT:
        raise ValueError(f"limit must be within 1..{MAX_LIMIT}")
    view = await _pending(request).claim(
        group=body.group, min_idle_ms=parse_duration_ms(body.min_idle), to=body.to or None,
        dry_run=body.dry_run, limit=body.limit,
    )
    return json_response(view)


@admin_only
@_bad_input
async def api_dead(request: Request) -> Response:
    q = request.query_params
    view = await _dead(request).letters(limit=_limit(request, 100),
                                        group=q.get("group") or None, after=q.get("after"))
    return json_response(view)


@admin_only
async def api_dead_show(request: Request) -> Response:
    letter = await _dead(request).show(request.path_params["id"])
    if letter is None:
        return error(404, f"no dead letter {request.path_params['id']}")
    return json_response(letter)


async def _selected(request: Request, dead: DeadLetters) -> list[str]:
    body = await _body(request, DeadRequest)
    if body.all == bool(body.ids):
        raise ValueError('give either "ids": [...] or "all": true')
    return await dead.all_ids(body.group) if body.all else body.ids


@admin_only
@_bad_input
async def api_dead_retry(request: Request) -> Response:
    dead = _dead(request)
    return json_response(await dead.retry(await _selected(request, dead)))


@admin_only
@_bad_input
async def api_dead_drop(request: Request) -> Response:
    dead = _dead(request)
    return json_response(await dead.drop(await _selected(request, dead)))


def gateway_view(state: GatewayState) -> GatewayView:
    """This process's connections, from the CLIENTS gauge and the pub/sub hub if present."""
    clients: dict[str, int] = {"ws": 0, "sse": 0}
    for family in REGISTRY.collect():
        if family.name == "livefeed_clients":
            for sample in family.samples:
                transport = sample.labels.get("transport")
                if transport is not None:
                    clients[transport] = int(sample.value)
    hub = state.hub
    if hub is None:
        return GatewayView(clients=clients, hub="absent")
    return GatewayView(clients=clients, hub="healthy" if hub.healthy else "unhealthy",
                       users=hub.local_users())


@admin_only
async def api_gateway(request: Request) -> Response:
    return json_response(gateway_view(_state(request)))


async def page(request: Request) -> Response:
    # The page is static; the data behind it needs the token the page reads from its
    # fragment (#token=, never sent to the server) and sends as a header.
    return FileResponse(STATIC / "admin.html", headers={"cache-control": "no-store"})


async def script(request: Request) -> Response:
    return FileResponse(STATIC / "admin.js", media_type="text/javascript",
                        headers={"cache-control": "no-store"})


def routes() -> list[BaseRoute]:
    return [
        Route("/admin", page),
        Route("/admin/admin.js", script),
        Route("/admin/api/status", api_status),
        Route("/admin/api/gateway", api_gateway),
        Route("/admin/api/pending", api_pending),
        Route("/admin/api/claim", api_claim, methods=["POST"]),
        Route("/admin/api/dead", api_dead),
        Route("/admin/api/dead/retry", api_dead_retry, methods=["POST"]),
        Route("/admin/api/dead/drop", api_dead_drop, methods=["POST"]),
        # A dead letter's id is a ref, `<partition>/<stream id>`: its "/" is part of it.
        Route("/admin/api/dead/{id:path}", api_dead_show),
    ]


FEATURE = Feature("admin", routes)

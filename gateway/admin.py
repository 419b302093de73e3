"""The admin API (`/admin/api/...`, JSON) and the `/admin` page, behind an admin token.

The views are the operator CLI's (`core.status`, `core.pending`, `core.deadletters`), so
`livefeed status --json` and `GET /admin/api/status` answer the same thing.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth
from livefeed.core.deadletters import DeadLetters
from livefeed.core.durations import parse_duration_ms
from livefeed.core.numbers import parse_int
from livefeed.core.pending import Pending, PendingError
from livefeed.core.status import Status
from livefeed.gateway.bearer import authenticate
from livefeed.gateway.feature import Feature
from livefeed.gateway.operation import ADMIN, Answer, Method, Operation, Param
from livefeed.gateway.state import GatewayState
from livefeed.schemas.admin import (
    ClaimRequest,
    ClaimView,
    DeadAction,
    DeadLetterList,
    DeadLetterView,
    DeadRequest,
    GatewayView,
    PendingView,
    StatusView,
)
from livefeed.schemas.http import ErrorBody

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
    return parse_int(raw, 1, MAX_LIMIT, "limit")  # ValueError -> 400 in `_bad_input`


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
        return error(404, f"no dead letter {request.path_params['id'][:80]}")
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


def _api(method: Method, path: str, operation_id: str, summary: str, answer: Answer,
         description: str = "", params: tuple[Param, ...] = (), body: object = None,
         bad_input: bool = False, not_found: str = "") -> Operation:
    """An admin API operation: an admin token, and `ErrorBody` for every refusal."""
    responses = {200: answer,
                 401: Answer("No valid token (`WWW-Authenticate: Bearer`)", ErrorBody),
                 403: Answer("A valid token that is not an admin's", ErrorBody)}
    if bad_input:
        responses[400] = Answer("Bad input: a parameter or the body", ErrorBody)
    if not_found:
        responses[404] = Answer(not_found, ErrorBody)
    return Operation(method, path, operation_id, summary, "admin", responses=responses,
                     description=description, params=params, body=body, security=ADMIN)


_LIMIT = Param("limit", "query", "at most this many (default 100)",
               Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)])
_GROUP = Param("group", "query", "only this consumer group (`persist`, `fanout`)")
# A dead letter's ref, `<partition>/<stream id>`, as two path segments.
_REF = (Param("partition", "path", "the partition", Annotated[int, msgspec.Meta(ge=0)]),
        Param("entry", "path", "the letter's id in that partition's dead-letter stream",
              Annotated[str, msgspec.Meta(pattern=r"\A[0-9]+-[0-9]+\Z")]))
_DEAD_BODY = ("Either explicit `ids` (refs `<partition>/<stream id>`) or `all: true` (of "
              "`group`, if given).")

OPERATIONS = (
    Operation("GET", "/admin", "getAdminPage", "The operator page", "admin",
              description="Static; it reads its admin token from `?token=` and calls the "
                          "API below with it.",
              responses={200: Answer("The page", media_type="text/html")}),
    Operation("GET", "/admin/admin.js", "getAdminScript", "The operator page's script",
              "admin", responses={200: Answer("JavaScript", media_type="text/javascript")}),
    _api("GET", "/admin/api/status", "getStatus", "Streams, groups and partitions",
         Answer("Totals over the partitions, then each partition", StatusView),
         description="What `livefeed status --json` prints."),
    _api("GET", "/admin/api/gateway", "getGateway", "This gateway's connections",
         Answer("The connections of the gateway that answers", GatewayView)),
    _api("GET", "/admin/api/pending", "getPending", "Pending entries, oldest first",
         Answer("The entries selected", PendingView),
         params=(_GROUP, Param("consumer", "query", "only this consumer's"),
                 Param("min_idle", "query", "only entries idle this long: a duration "
                       "(`250ms`, `30s`, `5m`, `1h`, `2d`; a bare number is seconds)"),
                 _LIMIT),
         bad_input=True, not_found="No such group"),
    _api("POST", "/admin/api/claim", "postClaim", "Move stale pending entries to a live "
         "consumer", Answer("What was claimed (or would be, with `dry_run`)", ClaimView),
         description="`to` defaults to the most recently active consumer that owns no "
                     "stale entry.",
         body=ClaimRequest, bad_input=True, not_found="No such group, or no live consumer "
         "to claim to"),
    _api("GET", "/admin/api/dead", "getDeadLetters", "Dead letters, oldest first",
         Answer("The letters selected and the total", DeadLetterList),
         params=(_LIMIT, _GROUP, Param("after", "query", "only letters after this ref "
                                       "(`<partition>/<stream id>`)")),
         bad_input=True),
    _api("POST", "/admin/api/dead/retry", "postDeadRetry", "Re-append dead letters' events",
         Answer("What happened to each letter", list[DeadAction]), description=_DEAD_BODY,
         body=DeadRequest, bad_input=True),
    _api("POST", "/admin/api/dead/drop", "postDeadDrop", "Delete dead letters for good",
         Answer("What happened to each letter", list[DeadAction]),
         description=_DEAD_BODY + " No confirmation step.", body=DeadRequest,
         bad_input=True),
    _api("GET", "/admin/api/dead/{partition}/{entry}", "getDeadLetter",
         "One dead letter with its payload",
         Answer("The letter, its original payload in `data`", DeadLetterView),
         description="The path ends with the letter's ref, `<partition>/<stream id>`.",
         params=_REF, not_found="No such letter"),
)

FEATURE = Feature("admin", routes, operations=OPERATIONS)

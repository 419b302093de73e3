"""The gateway's OpenAPI 3.1 document, generated, and where it is served.

The document is built from the features' declarations (`Operation`, `Channel`,
gateway/operation.py) and the msgspec types they name: `msgspec.json.schema_components`
writes the component schemas (JSON Schema 2020-12, which OpenAPI 3.1 uses). Nothing of it
is written by hand. `/openapi.json` serves it, `/docs` renders it as a page
(gateway/apidocs.py); `livefeed openapi` prints it, and `docs/openapi.json` is that output,
kept equal by tests/gateway/test_openapi.py.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from livefeed.gateway import apidocs
from livefeed.gateway.feature import Feature
from livefeed.gateway.operation import (
    ADMIN_TOKEN,
    USER_TOKEN,
    WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP,
    Answer,
    Channel,
    Operation,
    Param,
)

STATIC = Path(__file__).parent / "static"
REF = "#/components/schemas/{name}"
TITLE = "livefeed gateway"

DESCRIPTION = """\
Newsletters posted as webhooks (`POST /v1/events`) become a live, per-user feed: browsers
and programs follow it over WebSocket (`/v1/ws`) or Server-Sent Events (`/v1/sse`), resume
exactly after the last id they saw, and page through the persisted history
(`GET /v1/feed`). Operators use the admin API (`/admin/api/...`).

This document is generated from the gateway's route declarations and its msgspec bodies
(`livefeed openapi`); docs/design.md is the full contract: frames, close codes, settings
and failure semantics.

Errors are JSON: ingest answers a `Problem` (`error` a stable code, `detail` for people,
`path` the offending field), the other endpoints an `ErrorBody`."""

TAGS: dict[str, str] = {
    "ingest": "Events in: webhooks and other publishers.",
    "live": "Live delivery of one user's feed: replay after the last id seen, then live "
            "events. Frames (JSON): `hello`, `event`, `recovered`, `reset` "
            "(schemas/frames.py; docs/design.md, Frames).",
    "history": "The persisted history, from PostgreSQL.",
    "admin": "The operator API and page: streams, groups, pending entries, dead letters. "
             "The same views as the CLI's `--json`.",
    "monitoring": "Health, readiness and Prometheus metrics.",
    "pages": "The demo page, its static files, and this API's description.",
}

SECURITY_SCHEMES: dict[str, Any] = {
    USER_TOKEN: {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "`Authorization: Bearer <token>`: an HS256 JWT signed with "
                       "LIVEFEED_SECRET, `sub` the user, `exp` required "
                       "(`livefeed token USER`). Any valid token: the user is its `sub`.",
    },
    ADMIN_TOKEN: {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "`Authorization: Bearer <token>` with an admin token (`adm: true`; "
                       "`livefeed token NAME --admin`). Without a valid token: 401; "
                       "a valid token that is not an admin's: 403.",
    },
    WEBHOOK_SIGNATURE: {
        "type": "apiKey", "in": "header", "name": "X-Livefeed-Signature",
        "description": "`v1=<hex HMAC-SHA256(LIVEFEED_WEBHOOK_SECRET, "
                       "\"<timestamp>.\" + raw body)>`, with the timestamp of "
                       "`X-Livefeed-Timestamp`. (The untimed `sha256=<hex HMAC of the "
                       "body>` is refused unless LIVEFEED_ALLOW_UNTIMED_SIGNATURES=true: "
                       "it can be replayed.)",
    },
    WEBHOOK_TIMESTAMP: {
        "type": "apiKey", "in": "header", "name": "X-Livefeed-Timestamp",
        "description": "Unix seconds when the body was signed; refused (401) when more "
                       "than LIVEFEED_SIGNATURE_TOLERANCE seconds (default 300) from now.",
    },
}


def declared(features: Iterable[Feature]) -> tuple[list[Operation], list[Channel]]:
    """Every operation and channel of `features`, in the order they are plugged in."""
    features = list(features)
    return ([op for f in features for op in f.operations],
            [ch for f in features for ch in f.channels])


def document(operations: Sequence[Operation], channels: Sequence[Channel] = ()
             ) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations` (and the text of `channels`)."""
    types: list[Any] = []
    for op in operations:
        wanted = [op.body, *(p.type for p in op.params)]
        for answer in op.responses.values():
            wanted += [answer.body, *(h.type for h in answer.headers)]
        types += [t for t in wanted if t is not None and t not in types]
    framed = [ch for ch in channels if ch.frames is not None]
    types += [ch.frames for ch in framed if ch.frames not in types]
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = [(t, _ecma(s)) for t, s in zip(types, schemas, strict=True)]

    def schema(kind: Any) -> Any:
        return next(s for t, s in schema_of if t == kind)

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schema)
    for ch in framed:  # a union has no name of its own: the channel gives it one
        components.setdefault(ch.frames_name, schema(ch.frames))
    tags = list(dict.fromkeys(op.tag for op in operations))
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": version("livefeed"), "description": DESCRIPTION,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "tags": [{"name": tag, "description": _tag_text(tag, channels)} for tag in tags],
        "paths": paths,
        "components": {"schemas": _ecma(components), "securitySchemes": SECURITY_SCHEMES},
    }


def render(doc: dict[str, Any]) -> str:
    """The document as `docs/openapi.json` holds it."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _tag_text(tag: str, channels: Sequence[Channel]) -> str:
    text = TAGS[tag]
    for channel in channels:
        if channel.tag == tag:
            text += f"\n\nWebSocket `{channel.path}` (OpenAPI cannot describe it): " \
                    + channel.description
            if channel.frames is not None:
                text += f" Its messages: `{channel.frames_name}` (see Schemas)."
    return text


def _operation(op: Operation, schema: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                           "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    if op.params:
        out["parameters"] = [_param(p, schema) for p in op.params]
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": schema(op.body)}}}
    out["responses"] = {str(status): _answer(answer, schema)
                        for status, answer in sorted(op.responses.items())}
    if op.security:
        out["security"] = [{name: [] for name in alternative} for alternative in op.security]
    return out


def _param(param: Param, schema: Any) -> dict[str, Any]:
    return {"name": param.name, "in": param.where, "description": param.description,
            "required": param.required or param.where == "path",
            "schema": schema(param.type)}


def _answer(answer: Answer, schema: Any) -> dict[str, Any]:
    if answer.body is not None:
        body = schema(answer.body)
    elif answer.media_type == "application/json":
        body = {"type": "object"}
    else:
        body = {"type": "string"}
    out: dict[str, Any] = {"description": answer.description,
                           "content": {answer.media_type: {"schema": body}}}
    if answer.headers:
        out["headers"] = {h.name: {"description": h.description, "schema": schema(h.type),
                                   "required": h.required}
                          for h in answer.headers}
    return out


def _ecma(value: Any) -> Any:
    """`pattern`s as ECMA-262 regexes, which JSON Schema specifies: msgspec passes ours on
    as Python wrote them, anchored with `\\A` and `\\Z` (schemas/event.py); `^` and `$`
    mean the same there (ECMA's `$` does not match before a final newline)."""
    if isinstance(value, dict):
        out = {k: _ecma(v) for k, v in value.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str):
            if pattern.startswith("\\A"):
                pattern = "^" + pattern[2:]
            if pattern.endswith("\\Z"):
                pattern = pattern[:-2] + "$"
            out["pattern"] = pattern
        return out
    if isinstance(value, list):
        return [_ecma(v) for v in value]
    return value


class ApiDocs:
    """The app's document as JSON and as the docs page, made on first use."""

    def __init__(self, operations: Sequence[Operation], channels: Sequence[Channel]) -> None:
        self.operations = list(operations)
        self.channels = list(channels)

    @functools.cached_property
    def doc(self) -> dict[str, Any]:
        return document(self.operations, self.channels)

    @functools.cached_property
    def json(self) -> bytes:
        return render(self.doc).encode()

    @functools.cached_property
    def html(self) -> bytes:
        return apidocs.page(self.doc).encode()


def _docs(request: Request) -> ApiDocs:
    docs: ApiDocs = request.app.state.api_docs
    return docs


async def openapi_json(request: Request) -> Response:
    return Response(_docs(request).json, media_type="application/json",
                    headers={"cache-control": "no-cache"})


async def docs_page(request: Request) -> Response:
    return Response(_docs(request).html, media_type="text/html; charset=utf-8",
                    headers={"cache-control": "no-cache"})


async def docs_style(request: Request) -> Response:
    return FileResponse(STATIC / "docs.css", media_type="text/css",
                        headers={"cache-control": "no-cache"})


def routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi_json), Route("/docs", docs_page),
            Route("/docs/docs.css", docs_style)]


OPERATIONS = (
    Operation("GET", "/openapi.json", "getOpenApi", "This document (OpenAPI 3.1)", "pages",
              responses={200: Answer("The OpenAPI 3.1 document of this gateway")}),
    Operation("GET", "/docs", "getDocs", "This document as a page", "pages",
              description="Rendered on the server from `/openapi.json`: no script, no CDN.",
              responses={200: Answer("The API reference", media_type="text/html")}),
    Operation("GET", "/docs/docs.css", "getDocsStyle", "The docs page's style sheet", "pages",
              responses={200: Answer("CSS", media_type="text/css")}),
)

FEATURE = Feature("openapi", routes, operations=OPERATIONS)

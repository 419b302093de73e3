"""The OpenAPI document: every route declared, the committed copy current, valid OpenAPI
3.1, and served with its docs page. (tests/e2e/test_openapi_fuzz.py runs schemathesis
against a real gateway with it.)"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import get_args

import msgspec
import pytest
from openapi_spec_validator import validate
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from livefeed.core.settings import Resolved, Settings
from livefeed.gateway import apidocs, openapi
from livefeed.gateway.app import DEFAULT_FEATURES, create_app
from livefeed.gateway.feature import Feature
from livefeed.gateway.operation import Answer, Channel, Operation
from livefeed.schemas.frames import Frame
from livefeed.schemas.http import Accepted, ErrorBody
from tests.gateway.livehelp import app_client

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "docs" / "openapi.json"
REGENERATE = ".venv/bin/livefeed openapi > docs/openapi.json"
# Only building the app: nothing connects until its lifespan runs.
OFFLINE = Resolved(redis_url="redis://127.0.0.1:1", database_url="postgresql://x@127.0.0.1:1/x")


def mismatches(routes: Sequence[BaseRoute], operations: Sequence[Operation],
               channels: Sequence[Channel]) -> list[str]:
    """Routes (and methods) no declaration matches, and declarations that match no route.
    A declaration matches a route when its path, parameters filled in, is one the route
    serves: `/admin/api/dead/{partition}/{entry}` is served by `/admin/api/dead/{id:path}`."""
    problems: list[str] = []
    covered: set[tuple[int, str]] = set()
    for op in operations:
        sample = re.sub(r"\{\w+\}", "1", op.path)
        hits = [r for r in routes if isinstance(r, Route | Mount)
                and r.path_regex.match(sample)
                and (isinstance(r, Mount) or op.method in (r.methods or ()))]
        if not hits:
            problems.append(f"Operation {op.method} {op.path} names no route")
        covered |= {(id(r), op.method) for r in hits[:1]}  # the first match serves it
    for route in routes:
        if isinstance(route, Route):
            problems += [f"{m} {route.path} has no Operation (add one next to its route)"
                         for m in sorted(route.methods or ())
                         if m != "HEAD" and (id(route), m) not in covered]
        elif isinstance(route, Mount):
            if (id(route), "GET") not in covered:
                problems.append(f"mount {route.path} has no Operation under it")
        elif isinstance(route, WebSocketRoute):
            if route.path not in {ch.path for ch in channels}:
                problems.append(f"WebSocket {route.path} has no Channel")
        else:
            problems.append(f"{route!r}: an unknown kind of route")
    return problems


def test_every_route_is_declared_and_every_declaration_served() -> None:
    app = create_app(OFFLINE)
    assert mismatches(app.routes, *openapi.declared(DEFAULT_FEATURES)) == []


async def _nothing(request: Request) -> Response:
    return Response()


def test_an_undeclared_route_and_a_stray_declaration_are_reported() -> None:
    stray = Operation("GET", "/v1/gone", "getGone", "gone", "pages",
                      responses={200: Answer("x")})
    extra = Feature("extra", lambda: [Route("/v1/new", _nothing, methods=["POST"])],
                    operations=(stray,))
    app = create_app(OFFLINE, (*DEFAULT_FEATURES, extra))
    assert mismatches(app.routes, *openapi.declared((*DEFAULT_FEATURES, extra))) == [
        "Operation GET /v1/gone names no route",
        "POST /v1/new has no Operation (add one next to its route)",
    ]
    # A method the route does not serve is no match either.
    post = Operation("POST", "/healthz", "postHealthz", "x", "pages",
                     responses={200: Answer("x")})
    operations, channels = openapi.declared(DEFAULT_FEATURES)
    routes = create_app(OFFLINE).routes
    assert mismatches(routes, [*operations, post], channels) == [
        "Operation POST /healthz names no route"]
    assert mismatches(routes, operations, ()) == ["WebSocket /v1/ws has no Channel"]


def test_the_committed_document_is_the_generated_one() -> None:
    generated = openapi.render(openapi.document(*openapi.declared(DEFAULT_FEATURES)))
    assert SNAPSHOT.read_text() == generated, (
        f"docs/openapi.json is not what the code declares: a route or a body changed. "
        f"Regenerate it with `{REGENERATE}` and commit it with the change.")


def test_a_changed_body_changes_the_document() -> None:
    """What the snapshot test relies on: bodies come from the msgspec types themselves."""

    class Accepted2(msgspec.Struct):
        ids: list[str]
        accepted: list[str]

    def doc(body: object) -> str:
        op = Operation("POST", "/v1/x", "postX", "x", "ingest", responses={
            202: Answer("ok", body)})
        return openapi.render(openapi.document([op]))

    assert doc(Accepted) != doc(Accepted2)
    assert '"duplicates"' in doc(Accepted) and '"duplicates"' not in doc(Accepted2)


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document(*openapi.declared(DEFAULT_FEATURES))
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # the OpenAPI 3.1 schema, and every component a valid JSON Schema
    # JSON Schema regexes are ECMA-262's: no Python-only anchors left.
    assert "\\\\A" not in openapi.render(doc) and "\\\\Z" not in openapi.render(doc)
    ids = [op["operationId"] for methods in doc["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))
    assert {tag["name"] for tag in doc["tags"]} <= set(openapi.TAGS)
    assert "/v1/ws" in next(t["description"] for t in doc["tags"] if t["name"] == "live")
    # The frames of WebSocket and SSE, named: every type of schemas.frames.Frame.
    frame = doc["components"]["schemas"]["Frame"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in frame["anyOf"]] == [
        kind.__name__ for kind in get_args(Frame)]


def test_security_names_known_schemes() -> None:
    doc = openapi.document(*openapi.declared(DEFAULT_FEATURES))
    schemes = doc["components"]["securitySchemes"]
    used = {name for methods in doc["paths"].values() for op in methods.values()
            for alternative in op.get("security", []) for name in alternative}
    assert used == set(schemes)
    events = doc["paths"]["/v1/events"]["post"]["security"]
    assert events == [{"webhookSignature": [], "webhookTimestamp": []}, {"adminToken": []}]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.inline_styles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        self.links += [v for k, v in attrs if k in ("href", "src") and v]
        if values.get("id"):
            self.ids.add(values["id"] or "")
        self.inline_styles += "style" in values


async def test_served_document_and_docs_page(settings_factory: Callable[..., Settings]) -> None:
    async with app_client(settings_factory()) as (client, _):
        r = await client.get("/openapi.json")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.text == SNAPSHOT.read_text()
        doc = r.json()

        r = await client.get("/docs")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        page = _Page()
        page.feed(r.text)
        # Nothing a strict CSP would block, nothing from elsewhere.
        assert "script" not in page.tags and page.inline_styles == 0
        assert all(link.startswith(("/", "#")) for link in page.links), page.links
        for path, methods in doc["paths"].items():
            for method, op in methods.items():
                assert f'<span class="method {method}">' in r.text
                assert f"<code>{path}</code>" in r.text
                assert op["summary"].replace("`", "") in re.sub(r"</?code>", "", r.text)
        assert {f"schema-{name}" for name in doc["components"]["schemas"]} <= page.ids
        internal = {link[1:] for link in page.links if link.startswith("#")}
        assert internal <= page.ids, internal - page.ids  # every reference resolves

        css = await client.get("/docs/docs.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("broken", [ErrorBody, None])
def test_an_answer_without_json_schema_is_described_as_what_it_is(broken: object) -> None:
    op = Operation("GET", "/x", "getX", "x", "pages", responses={
        200: Answer("page", media_type="text/html"), 400: Answer("bad", broken)})
    doc = openapi.document([op])
    answers = doc["paths"]["/x"]["get"]["responses"]
    assert answers["200"]["content"] == {"text/html": {"schema": {"type": "string"}}}
    expected = ({"$ref": "#/components/schemas/ErrorBody"} if broken is not None
                else {"type": "object"})
    assert answers["400"]["content"]["application/json"]["schema"] == expected


def test_the_docs_page_escapes_every_text() -> None:
    op = Operation("GET", "/x", "getX", "<b>x</b>", "pages",
                   description="`<script>` and <script>alert(1)</script>\n\n- `a` <i>",
                   responses={200: Answer("<img src=x>", media_type="text/html")})
    page = _Page()
    html = apidocs.page(openapi.document([op]))
    page.feed(html)
    assert not {"script", "b", "i", "img"} & set(page.tags)
    assert "<code>&lt;script&gt;</code>" in html and "<li><code>a</code> &lt;i&gt;</li>" in html

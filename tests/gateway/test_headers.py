"""Browser-facing headers on every response, and the Origin check of /v1/ws and /v1/sse
(against real gateway processes: uvicorn answers a refused handshake)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from livefeed.core.settings import Settings, SettingsError, load
from livefeed.gateway.headers import STATIC, OriginPolicy
from tests.gateway.livehelp import Gateways, WsClient, app_client, token, ws_url

pytestmark = pytest.mark.anyio

EVIL = "http://evil.example"


def csp(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}


@pytest.mark.parametrize("path", ["/", "/admin", "/static/livefeed.js", "/v1/feed",
                                  "/healthz", "/admin/api/status", "/nothing-here"])
async def test_every_response_carries_the_browser_headers(
        settings_factory: Callable[..., Settings], path: str) -> None:
    async with app_client(settings_factory()) as (client, _):
        r = await client.get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    policy = csp(r)
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]


async def test_the_policy_allows_exactly_the_inline_blocks_of_the_pages(
        settings_factory: Callable[..., Settings]) -> None:
    """Each inline <script>/<style> of gateway/static/*.html is allowed by its hash (and a
    changed block is not): the pages run under the policy without unsafe-inline."""
    blocks: dict[str, set[str]] = {"script": set(), "style": set()}
    for page in STATIC.glob("*.html"):
        for kind, attrs, body in re.findall(r"<(script|style)([^>]*)>(.*?)</\1>",
                                            page.read_text(), re.DOTALL):
            if "src=" not in attrs:
                digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
                blocks[kind].add(f"'sha256-{digest}'")
    assert blocks["script"] or blocks["style"]  # the pages have inline blocks to check
    async with app_client(settings_factory()) as (client, _):
        policy = csp(await client.get("/"))
    assert set(policy["script-src"]) == {"'self'", *blocks["script"]}
    assert set(policy["style-src"]) == {"'self'", *blocks["style"]}


@pytest.mark.parametrize(("allowed", "origin", "host", "ok"), [
    ("", None, "gw.example", True),  # not a browser
    ("", "https://gw.example", "gw.example", True),
    ("", "http://gw.example:8000", "gw.example:8000", True),
    ("", "http://gw.example", "gw.example:80", True),
    ("", "https://gw.example:8443", "gw.example", True),  # a proxy that keeps only the name
    ("", "http://gw.example:9000", "gw.example:8000", False),
    ("", EVIL, "gw.example", False),
    ("", "null", "gw.example", False),
    ("", "http://gw.example.evil.example", "gw.example", False),
    (f"https://app.example, {EVIL}/", EVIL, "gw.example", True),
    ("https://app.example", "https://app.example:443", "gw.example", True),
    ("https://app.example", "http://app.example", "gw.example", False),
    ("*", EVIL, "gw.example", True),
])
def test_origin_policy(allowed: str, origin: str | None, host: str, ok: bool) -> None:
    assert OriginPolicy(allowed).allows(origin, host) is ok


@pytest.mark.parametrize("value", ["evil.example", "ftp://x.example", "https://x.example/path"])
def test_a_malformed_allow_list_is_refused_at_start(value: str) -> None:
    with pytest.raises(SettingsError, match="LIVEFEED_ALLOWED_ORIGINS"):
        load({"LIVEFEED_ALLOWED_ORIGINS": value})


def bearer(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(user)}"}


@pytest.mark.slow
async def test_websocket_and_sse_refuse_a_foreign_origin_before_the_handshake(
        gateways: Gateways) -> None:
    _, url = gateways.start()
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(ws_url(url, "alice").url, origin=EVIL, open_timeout=20)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        sse = await http.get("/v1/sse", headers={"origin": EVIL, **bearer("alice")})
        assert sse.status_code == 403
        assert sse.headers["x-content-type-options"] == "nosniff"
        # The page's own origin and clients without Origin are served.
        async with http.stream("GET", "/v1/sse",
                               headers={"origin": url, **bearer("alice")}) as same:
            assert same.status_code == 200
    for origin in (url, None):
        client = await WsClient.open(ws_url(url, "alice"), origin=origin)
        await client.until(lambda c: c.types() == ["hello"])
        await client.close()


@pytest.mark.slow
async def test_an_allowed_origin_is_served(gateways: Gateways) -> None:
    _, url = gateways.start(allowed_origins=f"https://app.example,{EVIL}")
    client = await WsClient.open(ws_url(url, "alice"), origin=EVIL)
    await client.until(lambda c: c.types() == ["hello"])
    await client.close()
    async with httpx.AsyncClient(base_url=url, timeout=20) as http, \
            http.stream("GET", "/v1/sse", headers={"origin": EVIL, **bearer("alice")}) as r:
        assert r.status_code == 200



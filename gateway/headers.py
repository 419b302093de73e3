"""Browser-facing protections of every response, and the `Origin` check of live streams.

Every HTTP response gets a Content-Security-Policy (scripts, styles and connections from
the gateway itself only; the inline `<script>` and `<style>` blocks of the pages in
`gateway/static/` are allowed by their SHA-256, computed from the files at start, so no
`unsafe-inline`), `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` with
`frame-ancestors 'none'`, and `Referrer-Policy: no-referrer`.

A WebSocket (`/v1/ws`) or SSE (`/v1/sse`) request that carries an `Origin` header is
refused with 403 unless the origin is the request's own host or is listed in
`LIVEFEED_ALLOWED_ORIGINS` (`*`: any); WebSocket before the handshake (under `livefeed
gateway`, `/v1/ws` is checked by its own protocol, ops/livews.py, with `OriginPolicy`).
Requests without `Origin` (non-browser clients) pass: the check keeps other sites' pages
from using a visitor's credentials, which only browsers send.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from livefeed.core import metrics
from livefeed.core.settings import origin_list

STATIC = Path(__file__).parent / "static"
# The live streams a page on another site could open with the visitor's credentials.
ORIGIN_CHECKED_HTTP = frozenset({"/v1/sse"})
_INLINE = re.compile(r"<(script|style)(\s[^>]*)?>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def inline_hashes(pages: Iterable[Path]) -> dict[str, list[str]]:
    """CSP sources (`'sha256-...'`) of the inline scripts and styles of `pages`."""
    found: dict[str, list[str]] = {"script": [], "style": []}
    for page in pages:
        for kind, attrs, body in _INLINE.findall(page.read_text()):
            if kind.lower() == "script" and attrs and "src=" in attrs.lower():
                continue
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            source = f"'sha256-{digest}'"
            if source not in found[kind.lower()]:
                found[kind.lower()].append(source)
    return found


def content_security_policy(static: Path = STATIC) -> str:
    hashes = inline_hashes(sorted(static.glob("*.html")))
    return "; ".join([
        "default-src 'none'",
        " ".join(["script-src 'self'", *hashes["script"]]),
        " ".join(["style-src 'self'", *hashes["style"]]),
        # 'self' covers ws:/wss: to the same host (CSP 3).
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def _host_port(netloc: str, default: int | None) -> tuple[str, int | None]:
    parts = urlsplit("//" + netloc)
    try:
        port = parts.port
    except ValueError:
        return "", None
    return (parts.hostname or ""), (port if port is not None else default)


class OriginPolicy:
    """Which `Origin`s may open a live stream (`LIVEFEED_ALLOWED_ORIGINS`)."""

    def __init__(self, allowed: str) -> None:
        listed = origin_list(allowed)
        self.any = "*" in listed
        self.listed = frozenset(self._normal(o) for o in listed if o != "*")

    @staticmethod
    def _normal(origin: str) -> tuple[str, str, int | None]:
        parts = urlsplit(origin.lower())
        host, port = _host_port(parts.netloc, _DEFAULT_PORTS.get(parts.scheme))
        return parts.scheme, host, port

    def allows(self, origin: str | None, host: str | None) -> bool:
        """`origin`: the request's Origin header (None: not a browser's request);
        `host`: its Host header."""
        if origin is None or self.any:
            return True
        scheme, o_host, o_port = self._normal(origin.strip())
        if scheme not in ("http", "https") or not o_host:
            return False  # "null" (a sandboxed or file: page) and anything malformed
        if (scheme, o_host, o_port) in self.listed:
            return True
        if not host:
            return False
        h_host, h_port = _host_port(host.strip().lower(), None)
        # A Host without a port: the default port, or a proxy that keeps only the name
        # (nginx `Host $host`): the name must match.
        return h_host == o_host and (h_port is None or h_port == o_port)


class BrowserHeaders:
    """ASGI middleware: the headers above on every HTTP response, the Origin check."""

    def __init__(self, app: ASGIApp, allowed_origins: str = "") -> None:
        self.app = app
        self.origins = OriginPolicy(allowed_origins)
        self.headers = [
            (b"content-security-policy", content_security_policy().encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" or (kind == "http" and scope["path"] in ORIGIN_CHECKED_HTTP):
            headers = Headers(scope=scope)
            if not self.origins.allows(headers.get("origin"), headers.get("host")):
                metrics.CONNECTIONS_REFUSED.labels("origin").inc()
                await self._refuse(scope, receive, send)
                return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # A close before the handshake is answered with HTTP 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse({"error": "this Origin may not open a stream here "
                                          "(LIVEFEED_ALLOWED_ORIGINS)"}, status_code=403)
        response.raw_headers.extend(self.headers)
        await response(scope, receive, send)

"""A bare page around the browser client (gateway/static/livefeed.js) for the browser
tests: written into a document the gateway served (so the page is of the gateway's origin
and address space, as on a real deployment: a page Playwright made up is "public" to
Chromium, which then blocks its connections to 127.0.0.1), with the client's options from
the test and a `getToken()` that asks a token endpoint the test plays. Its inline script is
the test's, not one of the shipped pages: it runs with the page's CSP bypassed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from livefeed.schemas.frames import PING_FRAME

BLANK_PATH = "/static/livefeed.css"  # any document of the gateway's
TOKEN_PATH = "/test/token"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>client under test</title></head>
<body><ul id="feed"></ul>
<script type="module">
import { connect } from "/static/livefeed.js";
const options = OPTIONS;
window.statuses = [];
window.tokensAsked = 0;
window.feed = connect({
  ...options,
  getToken: () => { window.tokensAsked += 1; return fetch("TOKEN_PATH").then((r) => r.text()); },
  onEvent(ev, info) {
    const li = document.createElement("li");
    li.dataset.eventId = ev.id;
    li.dataset.feedId = info.feedId;
    document.getElementById("feed").prepend(li);
  },
  onStatus(status, { detail, role }) {
    window.statuses.push(status + ": " + detail);
    document.body.dataset.status = status;
    document.body.dataset.role = role;
  },
});
</script></body></html>
""".replace("TOKEN_PATH", TOKEN_PATH)


async def csp_free_context(browser: Any) -> Any:
    """A browser context whose pages ignore the gateway's Content-Security-Policy: the
    test's page script is inline and the policy allows only the shipped pages' own."""
    return await browser.new_context(bypass_csp=True)


class ClientPage:
    """One page running the client; `tokens` mints what getToken() gets (each call)."""

    def __init__(self, page: Any, tokens: Callable[[], str]) -> None:
        self.page = page
        self.tokens = tokens
        self.minted: list[str] = []
        self.errors: list[str] = []  # the page's uncaught errors and console errors
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.websockets = 0  # WebSocket connections the page opened
        self.pings = 0  # `ping` frames they received
        page.on("websocket", self._opened)

    def _opened(self, ws: Any) -> None:
        self.websockets += 1

        def frame(payload: str | bytes) -> None:
            if payload == PING_FRAME.decode():
                self.pings += 1

        ws.on("framereceived", frame)

    @classmethod
    async def open(cls, browser: Any, base: str, tokens: Callable[[], str],
                   **options: object) -> ClientPage:
        """`browser`: a Browser (a page of its own context) or a BrowserContext (make it
        with `csp_free_context`)."""
        page = await (browser.new_page(bypass_csp=True) if hasattr(browser, "contexts")
                      else browser.new_page())
        self = cls(page, tokens)

        async def token(route: Any) -> None:
            self.minted.append(self.tokens())
            await route.fulfill(status=200, content_type="text/plain", body=self.minted[-1])

        await page.route(f"**{TOKEN_PATH}", token)
        await page.goto(f"{base}{BLANK_PATH}")
        await page.set_content(PAGE.replace("OPTIONS", json.dumps(options)))
        return self

    async def until_status(self, status: str, timeout: float = 30_000) -> None:
        try:
            await self.page.wait_for_selector(f"body[data-status='{status}']",
                                              state="attached", timeout=timeout)
        except Exception as exc:
            raise AssertionError(f"no status {status}: {await self.statuses()} "
                                 f"errors: {self.errors}") from exc

    async def until_status_seen(self, prefix: str, timeout: float = 30_000) -> None:
        """Until a status (`"<status>: <detail>"`) starting with `prefix` was reported."""
        await self.page.wait_for_function(
            f"window.statuses.some(s => s.startsWith({json.dumps(prefix)}))", timeout=timeout)

    async def statuses(self) -> list[str]:
        found: list[str] = await self.page.evaluate("window.statuses")
        return found

    async def until_shown(self, n: int, timeout: float = 60_000) -> None:
        await self.page.wait_for_selector(f"#feed li:nth-child({n})", state="attached",
                                          timeout=timeout)

    async def feed_ids(self) -> list[str]:
        ids: list[str] = await self.page.eval_on_selector_all(
            "#feed li", "els => els.map(e => e.dataset.feedId)")
        return ids

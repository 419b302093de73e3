"""The demo page and the admin page work in Chromium under the gateway's
Content-Security-Policy, with no violation reported."""

from __future__ import annotations

from typing import Any

import pytest

from livefeed.core import auth
from livefeed.core.keys import Keys
from tests.gateway.livehelp import SECRET, Gateways, make_log, publish, token
from tests.helpers.browser import wait_shown

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


async def open_watched(chromium: Any, url: str) -> tuple[Any, list[str]]:
    page = await chromium.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.add_init_script(WATCH)
    await page.goto(url)
    return page, errors


async def violations(page: Any, errors: list[str]) -> list[str]:
    seen: list[str] = await page.evaluate("window.__violations")
    return seen + [e for e in errors if "Content Security Policy" in e]


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_the_demo_page_runs_under_the_policy(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any, transport: str) -> None:
    _, url = gateways.start()
    page, errors = await open_watched(chromium, f"{url}/?token={token('erin')}"
                                                f"&transport={transport}")
    await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
    await publish(make_log(redis, keys), "erin", 2)
    await wait_shown(page, 2)
    assert await violations(page, errors) == []
    # The policy is really enforced: an inline script without its hash is refused.
    await page.evaluate("""() => { const s = document.createElement("script");
        s.textContent = "window.__ran = true"; document.body.append(s); }""")
    assert await page.evaluate("window.__ran === undefined")
    assert any("script-src" in v for v in await violations(page, errors))


async def test_the_admin_page_runs_under_the_policy(gateways: Gateways, chromium: Any) -> None:
    _, url = gateways.start()
    admin = auth.mint(SECRET, "ops", admin=True)
    page, errors = await open_watched(chromium, f"{url}/admin?token={admin}")
    await page.wait_for_selector("body[data-loaded='1']", timeout=30_000)
    # Its inline stylesheet applied: the header is laid out as a flex row.
    assert await page.evaluate("getComputedStyle(document.querySelector('header')).display") \
        == "flex"
    assert await violations(page, errors) == []

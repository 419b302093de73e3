"""Browser-test helpers: headless Chromium: Debian's `chromium` driven by Playwright
(never Playwright's own browser download)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """A launched browser (playwright.async_api.Browser), closed afterwards."""
    from playwright.async_api import async_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (ops/test does)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def shown(page: Any) -> list[str]:
    ids: list[str] = await page.eval_on_selector_all(
        "#feed li", "els => els.map(e => e.dataset.eventId)")
    return ids


async def wait_shown(page: Any, n: int) -> None:
    """Until the page shows at least `n` feed items. A selector, not wait_for_function: that
    one evaluates a string in the page, which the gateway's CSP (no 'unsafe-eval') refuses."""
    await page.wait_for_selector(f"#feed li:nth-child({n})", state="attached", timeout=60_000)

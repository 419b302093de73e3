"""The demo page reloaded in a real headless Chromium, against real gateway, persist and
fanout processes: a page that starts with a stored last id (localStorage) first shows the
persisted history (`GET /v1/feed`), then resumes live from that id, every event once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from livefeed.core.settings import Settings
from tests.gateway.livehelp import SECRET, token
from tests.helpers.browser import shown, wait_shown
from tests.helpers.pipeline import Deployment, Poster, events_of
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

USER = "rita"


async def post(poster: Poster, http: httpx.AsyncClient, start: int, n: int) -> list[str]:
    """`n` events, one request each (so each has its own `received_at`: the history's order
    is the posting order); their event ids in order."""
    for i in range(start, start + n):
        await poster.post(http, events_of(USER, i, 1))
    return poster.accepted[-n:]


async def stored(pool: asyncpg.Pool, n: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM newsletters") >= n)


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_reloaded_page_shows_its_history_then_resumes_live_each_event_once(
        settings_factory: Callable[..., Settings], pool: asyncpg.Pool, chromium: Any,
        tmp_path: Path, transport: str) -> None:
    settings = settings_factory(secret=SECRET, flush_ms=50)
    with Deployment(settings, tmp_path / "logs") as dep:
        url = dep.gateway()
        dep.consumer("persist", "persist-a")
        dep.consumer("fanout", "fanout-a")
        poster = Poster(settings, dep.live_urls)
        page = await chromium.new_page()
        page_url = f"{url}/#token={token(USER)}&transport={transport}"
        async with httpx.AsyncClient(timeout=10) as http:
            await page.goto(page_url)
            await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
            first = await post(poster, http, 0, 5)
            await wait_shown(page, 5)
            await eventually(lambda: stored(pool, 5), what="the first events persisted")
            assert await page.evaluate("window.livefeedClient.lastId"), "a stored last id"

            # A reload: the page starts with its stored last id.
            await page.reload()
            await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
            # The earlier events, from the history (before the fix: an empty feed).
            await page.wait_for_selector("#feed li:nth-child(5)", state="attached",
                                         timeout=15_000)
            second = await post(poster, http, 5, 3)
            await wait_shown(page, 8)
            await page.wait_for_timeout(500)  # a duplicate would show up by now
            assert await shown(page) == list(reversed(first + second))

            # Away while events arrive: they are in the history *and* replayed after the
            # stored id; shown once each.
            await page.goto("about:blank")
            away = await post(poster, http, 8, 4)
            await eventually(lambda: stored(pool, 12), what="the events of the absence persisted")
            await page.goto(page_url)
            await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
            await wait_shown(page, 12)
            last = await post(poster, http, 12, 2)
            await wait_shown(page, 14)
            await page.wait_for_timeout(500)
            assert await shown(page) == list(reversed(first + second + away + last))

"""The demo page in a real headless Chromium: live events, a server-side disconnect, and
every event shown exactly once after the reconnect (replayed ones marked as such)."""

from __future__ import annotations

from typing import Any

import pytest

from livefeed.core.embedded import free_port
from livefeed.core.keys import Keys
from tests.gateway.livehelp import Gateways, make_log, publish, tells_an_intact_head, token
from tests.helpers.browser import shown, wait_shown

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_demo_page_survives_a_gateway_restart_without_gap_or_duplicate(
    gateways: Gateways, redis: Any, keys: Keys, chromium: Any, transport: str
) -> None:
    port = free_port()
    proc, url = gateways.start(port=port)
    log = make_log(redis, keys)
    page = await chromium.new_page()
    await page.goto(f"{url}/#token={token('dana')}&transport={transport}")
    await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
    live = await publish(log, "dana", 5)
    await wait_shown(page, 5)
    assert await page.inner_text("#feed li:first-child .subject") == "subject 4"

    proc.kill()  # server-side disconnect: no close frame, no goodbye
    await page.wait_for_selector("#status[data-status='offline']", timeout=30_000)
    missed = await publish(log, "dana", 10, start=5)
    gateways.start(port=port)
    await wait_shown(page, 15)
    await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
    after = await publish(log, "dana", 3, start=15)
    await wait_shown(page, 18)
    await page.wait_for_timeout(500)  # a duplicate would show up by now

    ids = await shown(page)
    feed_ids = await page.eval_on_selector_all(
        "#feed li", "els => els.map(e => e.dataset.feedId)")
    replayed = await page.eval_on_selector_all(
        "#feed li.replayed", "els => els.map(e => e.dataset.feedId)")
    assert len(ids) == len(set(ids)) == 18
    assert feed_ids == list(reversed(live + missed + after))  # newest on top, in order
    assert sorted(replayed) == sorted(missed)


@pytest.mark.parametrize("feed", ["with history", "empty"])
@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_page_that_saw_no_event_yet_still_resumes_from_the_feed_end(
    gateways: Gateways, redis: Any, keys: Keys, chromium: Any, transport: str, feed: str
) -> None:
    """`hello` tells a fresh connection where the feed ends (its start, when it is empty):
    events published while such a page is disconnected are replayed, though the page never
    received an event (they are only in the feed stream here, not in the PostgreSQL
    history)."""
    port = free_port()
    proc, url = gateways.start(port=port)
    log = make_log(redis, keys)
    if feed == "with history":
        await publish(log, "erin", 3)  # older events, before the page opens
    page = await chromium.new_page()
    await page.goto(f"{url}/#token={token('erin')}&transport={transport}")
    await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
    proc.kill()
    await page.wait_for_selector("#status[data-status='offline']", timeout=30_000)
    missed = await publish(log, "erin", 4, start=3)
    gateways.start(port=port)
    if feed == "empty" and not await tells_an_intact_head(redis):
        # Redis 6.2 cannot tell a whole feed from a trimmed one: a reset, and the history.
        await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
        return
    await wait_shown(page, 4)
    await page.wait_for_timeout(500)
    feed_ids = await page.eval_on_selector_all(
        "#feed li", "els => els.map(e => e.dataset.feedId)")
    assert feed_ids == list(reversed(missed))

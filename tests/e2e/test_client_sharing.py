"""The browser client (gateway/static/livefeed.js) in a real headless Chromium against real
gateway processes: tabs of one browser share one connection and each shows every event
once; closing the leader tab hands over without a gap; offline and back online resumes
exactly; the README's "In a page" snippet works as written and asks getToken() on every
(re)connect."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from livefeed import gateway
from livefeed.core.embedded import free_port
from livefeed.core.keys import Keys
from tests.gateway.livehelp import Gateways, make_log, publish, token
from tests.helpers.browser import wait_shown
from tests.helpers.client_page import ClientPage, csp_free_context

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EMBED = Path(gateway.__file__).parent / "static" / "embed.html"


class Tabs:
    """Pages of one browser context (one profile: they share Web Locks and
    BroadcastChannel), each counting the connections it opened itself."""

    def __init__(self, context: Any, base: str, user: str, transport: str) -> None:
        self.context = context
        self.url = f"{base}/#token={token(user)}&transport={transport}"
        self.transport = transport
        self.opened: dict[Any, int] = {}

    async def open(self) -> Any:
        page = await self.context.new_page()
        self.opened[page] = 0

        def count(*_: object) -> None:
            self.opened[page] += 1

        if self.transport == "ws":
            page.on("websocket", count)
        else:
            page.on("request", lambda r: count() if "/v1/sse" in r.url else None)
        await page.goto(self.url)
        await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
        return page

    def connections(self) -> int:
        return sum(self.opened.values())


async def role(page: Any) -> str:
    return str(await page.get_attribute("#status", "data-role"))


async def feed_ids(page: Any) -> list[str]:
    ids: list[str] = await page.eval_on_selector_all(
        "#feed li", "els => els.map(e => e.dataset.feedId)")
    return ids


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_two_tabs_share_one_connection_and_each_shows_every_event_once(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any, transport: str) -> None:
    _, url = gateways.start()
    log = make_log(redis, keys)
    tabs = Tabs(await chromium.new_context(), url, "tess", transport)
    first = await tabs.open()
    second = await tabs.open()
    assert [await role(first), await role(second)] == ["leader", "follower"]

    sent = await publish(log, "tess", 12)
    for page in (first, second):
        await wait_shown(page, 12)
    await first.wait_for_timeout(500)  # a duplicate would show up by now
    for page in (first, second):
        assert await feed_ids(page) == list(reversed(sent))  # newest on top, each once
    assert tabs.opened == {first: 1, second: 0}


async def test_tabs_opened_at_the_same_time_elect_one_leader_and_each_show_every_event(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any) -> None:
    """Tabs that ask for the leader before any holds the lock hear from it once it does."""
    _, url = gateways.start()
    log = make_log(redis, keys)
    tabs = Tabs(await chromium.new_context(), url, "tara", "ws")
    pages: list[Any] = []

    async def one() -> None:
        pages.append(await tabs.open())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    sent = await publish(log, "tara", 5)
    for page in pages:
        await wait_shown(page, 5)
    await pages[0].wait_for_timeout(500)  # a duplicate would show up by now
    for page in pages:
        assert await feed_ids(page) == list(reversed(sent))
    assert sorted([await role(p) for p in pages]) == ["follower", "follower", "leader"]
    assert tabs.connections() == 1


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_closing_the_leader_tab_hands_over_without_a_gap(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any, transport: str) -> None:
    _, url = gateways.start()
    log = make_log(redis, keys)
    tabs = Tabs(await chromium.new_context(), url, "hana", transport)
    leader = await tabs.open()
    follower, other = await tabs.open(), await tabs.open()
    before = await publish(log, "hana", 4)
    for page in (follower, other):
        await wait_shown(page, 4)

    await leader.close()  # its lock goes: the next tab takes over with its own last id
    during = await publish(log, "hana", 6, start=4)  # while nobody is connected, maybe
    await follower.wait_for_selector("#status[data-role='leader']", timeout=30_000)
    for page in (follower, other):
        await wait_shown(page, 10)
    after = await publish(log, "hana", 3, start=10)
    for page in (follower, other):
        await wait_shown(page, 13)
    await follower.wait_for_timeout(500)
    for page in (follower, other):
        assert await feed_ids(page) == list(reversed(before + during + after))
    assert await role(other) == "follower"
    assert tabs.opened == {leader: 1, follower: 1, other: 0}


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_going_offline_and_back_online_resumes_exactly_in_every_tab(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any, transport: str) -> None:
    _, url = gateways.start()
    log = make_log(redis, keys)
    context = await chromium.new_context()
    tabs = Tabs(context, url, "olga", transport)
    pages = [await tabs.open(), await tabs.open()]
    before = await publish(log, "olga", 3)
    for page in pages:
        await wait_shown(page, 3)

    await context.set_offline(True)
    for page in pages:
        await page.wait_for_selector("#status[data-status='offline']", timeout=30_000)
    away = await publish(log, "olga", 5, start=3)
    await context.set_offline(False)
    for page in pages:
        await wait_shown(page, 8)
        await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
    after = await publish(log, "olga", 2, start=8)
    for page in pages:
        await wait_shown(page, 10)
    await pages[0].wait_for_timeout(500)
    for page in pages:
        assert await feed_ids(page) == list(reversed(before + away + after))
    replayed = await pages[1].eval_on_selector_all(
        "#feed li.replayed", "els => els.map(e => e.dataset.feedId)")
    assert sorted(replayed) == sorted(away)


def readme_snippet() -> str:
    """The code block of README.md's "In a page" subsection."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"^### In a page\n.*?^```html\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert found, "README.md has no \"### In a page\" subsection with an html block"
    return found.group(1)


async def test_the_readme_snippet_runs_and_asks_for_a_token_on_every_reconnect(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any) -> None:
    assert readme_snippet() in EMBED.read_text()  # the page below runs what the README shows
    port = free_port()
    proc, url = gateways.start(port=port)
    log = make_log(redis, keys)
    page = await chromium.new_page()
    tokens: list[str] = []

    async def mint(route: Any) -> None:  # the app's backend, minting a token per request
        tokens.append(token("emma"))
        await route.fulfill(status=200, content_type="text/plain", body=tokens[-1])

    await page.route("**/my-app/livefeed-token", mint)
    await page.goto(f"{url}/static/embed.html")
    await page.wait_for_selector("body[data-status='live']", state="attached",
                                 timeout=30_000)
    await publish(log, "emma", 3)
    await wait_shown(page, 3)
    asked = len(tokens)

    proc.kill()
    await page.wait_for_selector("body[data-status='offline']", state="attached",
                                 timeout=30_000)
    await publish(log, "emma", 4, start=3)
    gateways.start(port=port)
    await page.wait_for_selector("body[data-status='live']", state="attached",
                                 timeout=30_000)
    await wait_shown(page, 7)
    await page.wait_for_timeout(500)
    shown = await page.eval_on_selector_all("#feed li", "els => els.map(e => e.textContent)")
    assert shown == [f"subject {i} (sender{i}@example.com)" for i in reversed(range(7))]
    assert len(tokens) > asked  # the reconnect asked getToken() again


async def test_a_tab_opened_later_gets_what_it_missed_from_the_leader(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any) -> None:
    """A tab that opens behind the leader (its own last id older) gets the events after it
    from the leader's recent frames, then the live ones, each once; it opens no
    connection of its own."""
    _, url = gateways.start()
    log = make_log(redis, keys)
    context = await csp_free_context(chromium)
    leader = await ClientPage.open(context, url, lambda: token("lena"), transport="ws")
    await leader.until_status("live")
    sent = await publish(log, "lena", 6)
    await leader.until_shown(6)

    late = await ClientPage.open(context, url, lambda: token("lena"), transport="ws",
                                 lastId=sent[1], remember=False)
    await late.until_status("live")
    more = await publish(log, "lena", 2, start=6)
    await late.until_shown(6)
    await leader.until_shown(8)
    await late.page.wait_for_timeout(500)  # a duplicate would show up by now
    assert await late.feed_ids() == list(reversed(sent[2:] + more))
    assert await leader.feed_ids() == list(reversed(sent + more))
    assert await late.page.get_attribute("body", "data-role") == "follower"
    assert (leader.websockets, late.websockets) == (1, 0)

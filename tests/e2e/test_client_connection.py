"""The browser client's connection handling in a real headless Chromium against real gateway
processes: the watchdog on a silent server, and what it does with the tokens getToken()
gives it."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import jwt
import pytest

from livefeed.core import auth
from livefeed.core.keys import Keys
from tests.gateway.livehelp import Gateways, make_log, publish, token
from tests.helpers.client_page import ClientPage
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_the_watchdog_reconnects_when_the_server_goes_silent(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any, transport: str) -> None:
    """A frozen gateway (SIGSTOP) keeps its connections open and says nothing: the
    watchdog gives up on it, keeps retrying, and resumes exactly once it answers again.
    Over SSE too: the stream's keepalive is a `ping` event the page sees, not a comment."""
    proc, url = gateways.start(keepalive_s=0.25)
    log = make_log(redis, keys)
    client = await ClientPage.open(chromium, url, lambda: token("wade"), transport=transport,
                                   share=False, watchdogMs=2000)
    await client.until_status("live")
    before = await publish(log, "wade", 3)
    await client.until_shown(3)
    # The keepalive feeds the watchdog: an idle connection that gets its pings stays.
    if transport == "ws":
        await eventually(lambda: client.pings >= 20, what="pings over several watchdog periods")
        assert client.websockets == 1
    else:
        await client.page.wait_for_timeout(6000)  # three watchdog periods of idling
    assert not [s for s in await client.statuses() if s.startswith("offline")]

    os.kill(proc.pid, signal.SIGSTOP)
    try:
        await client.until_status_seen("offline: watchdog")
        during = await publish(log, "wade", 4, start=3)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    await client.until_shown(7)
    await client.until_status("live")
    after = await publish(log, "wade", 2, start=7)
    await client.until_shown(9)
    await client.page.wait_for_timeout(500)  # a duplicate would show up by now
    assert await client.feed_ids() == list(reversed(before + during + after))


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_refused_token_is_asked_for_again_and_never_resent(
        gateways: Gateways, chromium: Any, transport: str) -> None:
    _, url = gateways.start()
    forged = auth.mint("another-secret-that-is-long-enough-for-hs256", "nina")
    client = await ClientPage.open(chromium, url, lambda: forged, transport=transport,
                                   share=False, backoffBaseMs=50)
    await client.until_status("unauthorized")
    assert client.minted.count(forged) >= 2  # refused once; asked again: the same one
    assert (await client.statuses())[-1].startswith("unauthorized: getToken() returned")


async def test_a_websocket_refreshes_its_token_before_it_expires_and_stays_open(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any) -> None:
    _, url = gateways.start(token_grace_s=0.5)
    log = make_log(redis, keys)
    client = await ClientPage.open(chromium, url, lambda: token("rosa", ttl_s=3),
                                   transport="ws", share=False)
    await client.until_status("live")
    before = await publish(log, "rosa", 2)
    # Several lifetimes of a token: each refresh sent a fresh one on the same socket.
    await eventually(lambda: len(client.minted) >= 7, what="several token refreshes")
    after = await publish(log, "rosa", 2, start=2)
    await client.until_shown(4)
    assert await client.feed_ids() == list(reversed(before + after))
    assert client.websockets == 1
    assert not [s for s in await client.statuses() if s.startswith("offline")]


class CachingBackend:
    """An app backend that hands out the same short-lived token until it expires: a
    `refresh` would carry nothing new, so the gateway closes the connection (4003) or
    ends the stream (`expired`) when the token expires."""

    def __init__(self, user: str, ttl_s: int) -> None:
        self.user, self.ttl_s = user, ttl_s
        self.current: str | None = None
        self.expires = 0.0

    def __call__(self) -> str:
        if self.current is None or time.time() >= self.expires:
            self.current = token(self.user, ttl_s=self.ttl_s)
            claims = jwt.decode(self.current, options={"verify_signature": False})
            self.expires = float(claims["exp"])
        return self.current


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_an_expired_token_gets_a_fresh_one_and_resumes_exactly(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any, transport: str) -> None:
    _, url = gateways.start(token_grace_s=0.5)
    log = make_log(redis, keys)
    client = await ClientPage.open(chromium, url, CachingBackend("ezra", 2),
                                   transport=transport, share=False)
    await client.until_status("live")
    before = await publish(log, "ezra", 3)
    await client.until_status_seen("offline: token expired")
    during = await publish(log, "ezra", 3, start=3)  # maybe while it reconnects
    await client.until_shown(6)
    after = await publish(log, "ezra", 2, start=6)
    await client.until_shown(8)
    await client.page.wait_for_timeout(500)  # a duplicate would show up by now
    assert await client.feed_ids() == list(reversed(before + during + after))
    assert len(set(client.minted)) >= 2


async def test_the_reconnect_backoff_is_full_jitter_up_to_its_cap(
        gateways: Gateways, chromium: Any) -> None:
    """Attempt n waits a uniformly random time in [0, min(max, base * 2^n)]: reconnects of
    many clients after a gateway restart spread over the whole window."""
    _, url = gateways.start()
    page = await chromium.new_page()
    await page.goto(f"{url}/static/livefeed.css")  # a document of the gateway's origin
    spans = await page.evaluate("""async () => {
        const { backoffDelay, DEFAULTS } = await import("/static/livefeed.js");
        const out = [];
        for (let n = 0; n < 10; n++) {
            const xs = Array.from({ length: 400 }, () => backoffDelay(n));
            const cap = Math.min(DEFAULTS.backoffMaxMs, DEFAULTS.backoffBaseMs * 2 ** n);
            out.push([cap, Math.min(...xs), Math.max(...xs)]);
        }
        return out;
    }""")
    caps = [cap for cap, _, _ in spans]
    assert caps == [min(20000, 500 * 2**n) for n in range(10)]
    for cap, low, high in spans:
        assert 0 <= low < 0.1 * cap and 0.9 * cap < high <= cap

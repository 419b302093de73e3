"""The browser client's connection handling in a real headless Chromium against real gateway
processes: the watchdog on a silent server, and what it does with the tokens getToken()
gives it."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from livefeed.core import auth
from livefeed.core.keys import Keys
from tests.gateway.livehelp import Gateways, make_log, publish, token
from tests.helpers.client_page import ClientPage

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]


async def test_the_watchdog_reconnects_when_the_server_goes_silent(
        gateways: Gateways, redis: Any, keys: Keys, chromium: Any) -> None:
    """A frozen gateway (SIGSTOP) keeps its connections open and says nothing: the
    watchdog gives up on it, keeps retrying, and resumes exactly once it answers again."""
    proc, url = gateways.start()
    log = make_log(redis, keys)
    client = await ClientPage.open(chromium, url, lambda: token("wade"), transport="ws",
                                   share=False, watchdogMs=2000)
    await client.until_status("live")
    before = await publish(log, "wade", 3)
    await client.until_shown(3)

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


@pytest.mark.parametrize("transport", ["ws"])
async def test_a_refused_token_is_asked_for_again_and_never_resent(
        gateways: Gateways, chromium: Any, transport: str) -> None:
    _, url = gateways.start()
    forged = auth.mint("another-secret-that-is-long-enough-for-hs256", "nina")
    client = await ClientPage.open(chromium, url, lambda: forged, transport=transport,
                                   share=False, backoffBaseMs=50)
    await client.until_status("unauthorized")
    assert client.minted.count(forged) >= 2  # refused once; asked again: the same one
    assert (await client.statuses())[-1].startswith("unauthorized: getToken() returned")

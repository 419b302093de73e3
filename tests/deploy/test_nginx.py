"""The shipped nginx configuration, run for real (Debian's nginx, a throwaway certificate)
in front of two gateway processes: a Chromium page on wss:// or https:// SSE through it,
the gateway serving the page killed, then the other one; the page reconnects through
nginx each time and shows every event exactly once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from livefeed.core.keys import Keys
from livefeed.schemas.event import MAX_BODY_BYTES
from tests.deploy.nginxsite import NGINX_CONF, running_nginx
from tests.gateway.livehelp import Gateways, make_log, publish, token
from tests.helpers.browser import shown, wait_shown
from tests.procs import Proc

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FAIL_TIMEOUT_S = int(re.findall(r"fail_timeout=(\d+)s", NGINX_CONF.read_text())[0])


def clients(url: str, transport: str) -> int:
    """Live clients of `transport` on the gateway at `url` (its own /metrics); 0 if the
    gateway is down."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.ConnectError:
        return 0
    m = re.search(rf'^livefeed_clients{{transport="{transport}"}} (\S+)$', text, re.M)
    return int(float(m[1])) if m else 0


async def serving(page: Any, urls: list[str], transport: str) -> int:
    """Index of the one gateway holding the page's live connection (waits for it)."""
    for _ in range(100):
        counts = [clients(u, transport) for u in urls]
        if sorted(counts) == [0, 1]:
            return counts.index(1)
        await page.wait_for_timeout(100)
    raise AssertionError(f"no single gateway holds the page: {counts}")


async def statuses(page: Any) -> list[str]:
    seen: list[str] = await page.evaluate("window.seenStatuses.splice(0)")
    return seen


@pytest.mark.browser
@pytest.mark.timeout(240)
@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_page_behind_nginx_survives_its_gateways_being_killed_one_after_another(
    gateways: Gateways, redis: Any, keys: Keys, chromium: Any, tmp_path: Path,
    transport: str,
) -> None:
    procs: list[Proc] = []
    urls: list[str] = []
    for _ in range(2):
        proc, url = gateways.start()
        procs.append(proc)
        urls.append(url)
    log = make_log(redis, keys)
    with running_nginx(tmp_path / "nginx", [u.removeprefix("http://") for u in urls]) as nginx:
        context = await chromium.new_context(ignore_https_errors=True)
        page = await context.new_page()
        await page.goto(f"{nginx.url}/#token={token('dana')}&transport={transport}")
        await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
        assert await page.evaluate("location.protocol") == "https:"
        # HTTP/2 toward the browser (SSE streams share one connection).
        assert await page.evaluate(
            "performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
        # Every status the page goes through, to see the reconnects happen.
        await page.evaluate("""() => {
            window.seenStatuses = [];
            new MutationObserver(() => window.seenStatuses.push(
                document.getElementById('status').dataset.status)
            ).observe(document.getElementById('status'), {attributes: true});
        }""")
        published = await publish(log, "dana", 5)
        await wait_shown(page, 5)

        for round_ in range(2):
            first = await serving(page, urls, transport)
            procs[first].kill()  # no close frame, no goodbye: nginx sees the upstream drop
            # Plain requests keep working: one that nginx sends to the dead gateway fails
            # to connect and is passed to the live one (which then takes them all).
            dead, alive = (u.removeprefix("http://") for u in (urls[first], urls[1 - first]))
            async with httpx.AsyncClient(base_url=nginx.url, verify=False) as http:
                for _ in range(4):
                    assert (await http.get("/healthz")).status_code == 200
            # Each was answered by the live gateway, whether nginx tried the dead one first
            # (then passed it on) or already knew it was down (which depends on timing).
            assert all(tried[-1] == alive and set(tried) <= {dead, alive}
                       for tried in nginx.served_by("/healthz")[-4:])
            missed = await publish(log, "dana", 5, start=len(published))
            published += missed
            await wait_shown(page, len(published))
            await page.wait_for_selector("#status[data-status='live']", timeout=30_000)
            # Reconnected through nginx to the gateway still alive.
            assert await serving(page, urls, transport) == 1 - first
            seen = await statuses(page)
            assert "offline" in seen and seen[-1] == "live", seen
            live = await publish(log, "dana", 3, start=len(published))
            published += live
            await wait_shown(page, len(published))
            if round_ == 0:  # bring the killed one back on its port, then kill the other
                port = int(urls[first].rsplit(":", 1)[1])
                procs[first], _ = gateways.start(port=port)
                # nginx may skip a gateway for fail_timeout after failed connects: wait
                # until plain requests reach the restarted one before killing the other.
                await page.wait_for_timeout(FAIL_TIMEOUT_S * 1000 + 500)
                back = urls[first].removeprefix("http://")
                async with httpx.AsyncClient(base_url=nginx.url, verify=False) as http:
                    for _ in range(50):
                        assert (await http.get("/healthz")).status_code == 200
                        if any(tried[-1] == back for tried in nginx.served_by("/healthz")):
                            break
                    else:
                        raise AssertionError(f"nginx never sent a request to {back} again")

        await page.wait_for_timeout(500)  # a duplicate would show up by now
        ids = await shown(page)
        feed_ids = await page.eval_on_selector_all(
            "#feed li", "els => els.map(e => e.dataset.feedId)")
        replayed = await page.eval_on_selector_all(
            "#feed li.replayed", "els => els.map(e => e.dataset.feedId)")
        assert len(ids) == len(set(ids)) == len(published) == 21
        assert feed_ids == list(reversed(published))  # newest on top, in order
        assert set(replayed) <= set(published[5:])  # only events after a kill may replay
        await context.close()
        assert "no live upstreams" not in nginx.errors()


async def test_nginx_refuses_bodies_over_the_ingest_limit_and_hides_metrics(
    gateways: Gateways, tmp_path: Path,
) -> None:
    _, url = gateways.start()
    with running_nginx(tmp_path / "nginx", [url.removeprefix("http://")]) as nginx:
        async with httpx.AsyncClient(base_url=nginx.url, verify=False, timeout=10) as client:
            too_big = await client.post("/v1/events", content=b"x" * (MAX_BODY_BYTES + 1),
                                        headers={"content-type": "application/json"})
            assert too_big.status_code == 413
            assert "nginx" in too_big.text  # refused by the proxy, not by a gateway
            assert (await client.get("/metrics")).status_code == 404
            assert (await client.get("/readyz")).status_code == 200
            page = await client.get("/", headers={"accept-encoding": "gzip"})
            assert page.status_code == 200 and page.http_version == "HTTP/1.1"

"""The /admin page in headless Chromium: groups, lag, pending, dead letters, and its buttons."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from livefeed.core import auth
from livefeed.core.embedded import free_port
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.secretfile import signing_secret
from livefeed.core.settings import Settings
from livefeed.gateway import app as app_mod
from tests.helpers.admin import MINE
from tests.helpers.streams import groups, ingest, make_stale, poisoned, refs
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.browser


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The gateway app (admin features) under uvicorn in this event loop."""
    app = app_mod.create_app(settings, MINE)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        url = f"http://127.0.0.1:{port}"
        await eventually(lambda: server.started, what="the admin server")
        try:
            yield url
        finally:
            server.should_exit = True


async def test_admin_page_shows_groups_lag_and_dead_letters(
        settings_factory: Callable[..., Settings], redis: Any, keys: Keys,
        tmp_path: Path, chromium: Any) -> None:
    settings = settings_factory(secret="admin-page-test-secret-long-enough-for-hs256")
    ids = await ingest(redis, keys, 8)
    await groups(redis, keys)
    await redis.xreadgroup(PERSIST_GROUP, "persist-dead", {keys.ingest_of("alice"): ">"}, count=3)
    await make_stale(redis, keys, PERSIST_GROUP, "persist-dead", 300_000)
    await redis.xreadgroup(FANOUT_GROUP, "fanout-1", {keys.ingest_of("alice"): ">"}, count=8)
    await redis.xack(keys.ingest_of("alice"), FANOUT_GROUP, *ids[:6])
    dead_id, _, _ = await poisoned(redis, keys, "Poison pill")
    token = auth.mint(signing_secret(settings), "ops", admin=True)

    async with serving(settings) as url:
        # A user token gets the page but no data: the API refuses it.
        user = auth.mint(signing_secret(settings), "alice")
        async with httpx.AsyncClient(base_url=url) as client:
            denied = await client.get("/admin/api/status",
                                      headers={"authorization": f"Bearer {user}"})
            assert denied.status_code == 403

        page = await chromium.new_page(viewport={"width": 1400, "height": 1000})
        # In the fragment: the browser never sends it; the page sends it as the header.
        await page.goto(f"{url}/admin#token={token}")
        await page.wait_for_selector("body[data-loaded='1']", timeout=30_000)
        groups_text = await page.inner_text("#groups")
        for text in (PERSIST_GROUP, FANOUT_GROUP):
            assert text in groups_text
        rows = {r.split("\t")[0]: r.split("\t") for r in groups_text.splitlines()[1:]}
        # columns: group, consumers, pending, lag, ...
        assert rows[PERSIST_GROUP][2:4] == ["3", "5"]
        assert rows[FANOUT_GROUP][2:4] == ["2", "0"]
        dead_text = await page.inner_text("#dead")
        assert dead_id in dead_text and "ValueError: bad sender" in dead_text
        assert "Poison pill" in dead_text
        # Entries and letters are named by refs, `<partition>/<stream id>`.
        assert dead_id.startswith(f"{keys.partition_of('bob')}/")
        pending_text = await page.inner_text("#pending")
        assert "persist-dead" in pending_text
        for entry_ref in refs(keys, "alice", ids[:3]):
            assert entry_ref in pending_text
        shot = tmp_path / "admin.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # Retry asks first; accepted, the letter leaves and its event is back in ingest.
        questions: list[str] = []

        async def accept(dialog: Any) -> None:
            questions.append(dialog.message)
            await dialog.accept()

        page.on("dialog", accept)
        await page.click("#dead button:text('Retry')")
        await page.wait_for_selector("#dead :text('No dead letters.')", timeout=30_000)
        assert questions == [f"Put dead letter {dead_id} back into the ingest stream?"]
        # (into bob's partition: the letter's own; alice's entries stay as they were)
        assert await redis.xlen(keys.ingest_of("bob")) == 1
        assert await redis.xlen(keys.ingest_of("alice")) == 8

        # Claim moves the crashed consumer's entries to the named consumer.
        await page.fill("#claim-to", "persist-2")
        await page.click(f"button[data-group='{PERSIST_GROUP}']")
        await page.wait_for_selector("#notice:text('moved 3 entries')", timeout=30_000)
        assert "from persist-dead to persist-2" in questions[-1]
        owners = await redis.xpending_range(keys.ingest_of("alice"), PERSIST_GROUP, min="-",
                                            max="+", count=10)
        assert {o["consumer"] for o in owners} == {b"persist-2"}

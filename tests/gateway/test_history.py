"""`GET /v1/feed`: persisted history, newest first, keyset pagination, per-user."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from livefeed.core import newsletters
from livefeed.core.newsletters import Row
from livefeed.core.settings import Settings
from livefeed.gateway import history
from tests.gateway.livehelp import SECRET, app_client, bearer, bearer_for, token

pytestmark = pytest.mark.anyio


async def insert(pool: asyncpg.Pool, user: str, n: int, same_time: bool = False) -> list[str]:
    """Rows as persist writes them; returns their ids newest first."""
    base = datetime(2025, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(n):
        at = base if same_time else base + timedelta(minutes=i)
        rows.append(Row(uuid.uuid4(), user, f"s{i}", f"x{i}@example.com", None, at, None,
                        f"{i + 1}-0"))
    assert await newsletters.insert_batch(pool, rows) == n
    rows.sort(key=lambda r: (r.received_at, r.id), reverse=True)
    return [str(r.id) for r in rows]


async def all_pages(client: httpx.AsyncClient, user: str, limit: int) -> list[str]:
    ids: list[str] = []
    before = None
    while True:
        params = {"limit": str(limit)}
        if before:
            params["before"] = before
        r = await client.get("/v1/feed", params=params, headers=bearer(user))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        ids += [it["id"] for it in body["items"]]
        before = body["next"]
        if before is None:
            return ids


@pytest.mark.parametrize("same_time", [False, True])
async def test_pages_are_newest_first_without_gaps_or_repeats(
    settings_factory: Callable[..., Settings], pool: asyncpg.Pool, same_time: bool
) -> None:
    want = await insert(pool, "alice", 23, same_time=same_time)
    await insert(pool, "bob", 5)
    features = (history.FEATURE,)
    async with app_client(settings_factory(secret=SECRET), features) as (client, _):
        assert await all_pages(client, "alice", 5) == want
        assert await all_pages(client, "alice", 200) == want
        first = (await client.get("/v1/feed", headers=bearer("alice"))).json()
    item = first["items"][0]
    assert set(item) >= {"id", "user_id", "subject", "sender", "received_at", "stream_id"}
    assert item["user_id"] == "alice"


async def test_bad_requests(settings_factory: Callable[..., Settings], pool: Any) -> None:
    features = (history.FEATURE,)
    async with app_client(settings_factory(secret=SECRET), features) as (client, _):
        assert (await client.get("/v1/feed")).status_code == 401
        assert (await client.get("/v1/feed", headers=bearer_for("x.y.z"))).status_code == 401
        tok = token("alice")
        for params in ({"before": "not-a-cursor"}, {"limit": "0"}, {"limit": "lots"},
                       {"limit": "201"}):
            r = await client.get("/v1/feed", params=params, headers=bearer_for(tok))
            assert r.status_code == 400, params
        empty = await client.get("/v1/feed", headers=bearer_for(tok))
        assert empty.json() == {"items": [], "next": None}
        # A good token in the URL is refused (URLs are logged), with the way to send it.
        refused = await client.get("/v1/feed", params={"token": tok})
        assert refused.status_code == 401
        assert "Authorization: Bearer" in refused.json()["error"]

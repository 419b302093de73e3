"""The admin API: token checks, and the operator views and actions over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from livefeed.core import auth, metrics
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.secretfile import signing_secret
from livefeed.core.settings import Settings
from livefeed.gateway import hub
from tests.gateway.livehelp import Counting
from tests.helpers.admin import MINE, app_client
from tests.helpers.streams import groups, ingest, ingest_length, make_stale, poisoned, refs


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(secret="admin-test-secret-long-enough-for-hs256!")


@pytest.fixture
def admin(settings: Settings) -> dict[str, str]:
    return bearer(auth.mint(signing_secret(settings), "ops", admin=True))


ENDPOINTS = [("GET", "/admin/api/status"), ("GET", "/admin/api/pending"),
             ("GET", "/admin/api/dead"), ("GET", "/admin/api/gateway"),
             ("GET", "/admin/api/dead/0/1-1"), ("POST", "/admin/api/dead/retry"),
             ("POST", "/admin/api/dead/drop"), ("POST", "/admin/api/claim")]


async def test_every_endpoint_needs_an_admin_token(settings: Settings, redis: Any) -> None:
    secret = signing_secret(settings)
    user = auth.mint(secret, "alice")
    forged = auth.mint("another-secret-" + "x" * 32, "ops", admin=True)
    expired = auth.mint(secret, "ops", admin=True, ttl_s=-10)
    good = auth.mint(secret, "ops", admin=True)
    async with app_client(settings) as (client, _):
        for method, path in ENDPOINTS:
            none = await client.request(method, path)
            assert none.status_code == 401, path
            assert none.headers["www-authenticate"] == "Bearer"
            for bad in (forged, expired, "junk"):
                assert (await client.request(method, path, headers=bearer(bad))).status_code \
                    == 401, path
            denied = await client.request(method, path, headers=bearer(user))
            assert denied.status_code == 403, path
            # An admin token in the URL is refused: only the header counts.
            query = await client.request(method, f"{path}?token={good}")
            assert query.status_code == 401, path
            assert "Authorization: Bearer" in query.json()["error"]
            both = await client.request(method, f"{path}?token={good}", headers=bearer(good))
            assert both.status_code == 401, path
        ok = await client.get("/admin/api/status", headers=bearer(good))
        assert ok.status_code == 200
        # The page itself is static; it fetches the data with the token from its URL.
        page = await client.get("/admin")
        assert page.status_code == 200 and "livefeed admin" in page.text
        assert (await client.get("/admin/admin.js")).status_code == 200


async def test_status_pending_and_claim(settings: Settings, admin: dict[str, str],
                                        redis: Any, keys: Keys) -> None:
    ids = refs(keys, "alice", await ingest(redis, keys, 5))
    await groups(redis, keys)
    await redis.xreadgroup(PERSIST_GROUP, "persist-dead", {keys.ingest_of("alice"): ">"}, count=2)
    await make_stale(redis, keys, PERSIST_GROUP, "persist-dead", 300_000)
    async with app_client(settings) as (client, _):
        status = (await client.get("/admin/api/status", headers=admin)).json()
        lag = {g["name"]: (g["pending"], g["lag"]) for g in status["groups"]}
        assert lag == {PERSIST_GROUP: (2, 3), FANOUT_GROUP: (0, 5)}

        r = await client.get("/admin/api/pending", headers=admin,
                             params={"group": PERSIST_GROUP, "min_idle": "1m"})
        assert [(e["id"], e["consumer"], e["deliveries"]) for e in r.json()["entries"]] == [
            (ids[0], "persist-dead", 1), (ids[1], "persist-dead", 1)]
        assert (await client.get("/admin/api/pending", headers=admin,
                                 params={"group": "nope"})).status_code == 404
        assert (await client.get("/admin/api/pending", headers=admin,
                                 params={"min_idle": "soon"})).status_code == 400
        assert (await client.get("/admin/api/pending", headers=admin,
                                 params={"limit": "0"})).status_code == 400

        body = {"group": PERSIST_GROUP, "min_idle": "60s", "to": "persist-2"}
        dry = await client.post("/admin/api/claim", headers=admin, json={**body, "dry_run": True})
        assert dry.status_code == 200 and len(dry.json()["entries"]) == 2
        moved = await client.post("/admin/api/claim", headers=admin, json=body)
        assert [e["id"] for e in moved.json()["entries"]] == ids[:2]
        owners = await redis.xpending_range(keys.ingest_of("alice"), PERSIST_GROUP, min="-",
                                            max="+", count=10)
        assert {o["consumer"] for o in owners} == {b"persist-2"}
        assert (await client.post("/admin/api/claim", headers=admin,
                                  json={"group": PERSIST_GROUP})).status_code == 400
        assert (await client.post("/admin/api/claim", headers=admin,
                                  content=b"{")).status_code == 400


async def test_dead_letters_over_http(settings: Settings, admin: dict[str, str],
                                      redis: Any, keys: Keys) -> None:
    admin_token = admin["authorization"].removeprefix("Bearer ")
    first, event_id, data = await poisoned(redis, keys, "Poison A")
    second, _, _ = await poisoned(redis, keys, "Poison B")
    async with app_client(settings) as (client, _):
        listing = (await client.get("/admin/api/dead", headers=admin)).json()
        assert [d["id"] for d in listing["letters"]] == [first, second]
        # A ref holds a "/": as is, and percent-encoded as a browser's encodeURIComponent does.
        for path in (first, first.replace("/", "%2F")):
            shown = await client.get(f"/admin/api/dead/{path}", headers=admin)
            assert shown.status_code == 200, path
            assert shown.json()["id"] == first and shown.json()["data"] == data.decode()
            assert shown.json()["error"] == "ValueError: bad sender"
        for absent in ("0/1-1", "1-1", "²/1-1"):
            missing = await client.get(f"/admin/api/dead/{absent}", headers=admin)
            assert missing.status_code == 404
            assert missing.json() == {"error": f"no dead letter {absent}"}

        assert (await client.post("/admin/api/dead/retry", headers=admin,
                                  json={})).status_code == 400
        retried = await client.post("/admin/api/dead/retry", headers=admin, json={"ids": [first]})
        assert [(a["id"], a["outcome"]) for a in retried.json()] == [(first, "retried")]
        [(_, fields)] = await redis.xrange(keys.ingest_of("bob"))
        assert fields[b"event_id"] == event_id.encode() and fields[b"data"] == data
        assert await ingest_length(redis, keys) == 1

        # A cross-site form can POST text/plain with the token in its action URL, but it
        # cannot set a header: refused, and nothing is dropped.
        forged = await client.post(f"/admin/api/dead/drop?token={admin_token}",
                                   content=b'{"all": true}',
                                   headers={"content-type": "text/plain",
                                            "origin": "https://elsewhere.example"})
        assert forged.status_code == 401
        assert (await client.get("/admin/api/dead", headers=admin)).json()["total"] == 1

        dropped = await client.post("/admin/api/dead/drop", headers=admin, json={"all": True})
        assert [(a["id"], a["outcome"]) for a in dropped.json()] == [(second, "dropped")]
        assert (await client.get("/admin/api/dead", headers=admin)).json()["total"] == 0


async def test_gateway_connections(settings: Settings, admin: dict[str, str],
                                   redis: Any) -> None:
    async with app_client(settings) as (client, _):
        view = (await client.get("/admin/api/gateway", headers=admin)).json()
        assert view["hub"] == "absent" and view["users"] is None
    async with app_client(settings, (*MINE, hub.FEATURE)) as (client, app), \
            contextlib.AsyncExitStack() as subscribed:
        for user in ("alice", "bob", "carol", "alice"):  # two tabs of alice: one user
            assert await subscribed.enter_async_context(
                app.state.lf.hub.subscribe(user, Counting()))
        metrics.CLIENTS.labels("ws").inc(2)
        try:
            view = (await client.get("/admin/api/gateway", headers=admin)).json()
        finally:
            metrics.CLIENTS.labels("ws").dec(2)
        assert view["hub"] == "healthy" and view["users"] == 3
        assert view["clients"]["ws"] >= 2

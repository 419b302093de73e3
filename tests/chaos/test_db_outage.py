"""A gateway whose PostgreSQL is away: it starts, takes events, delivers live, stays ready
(reporting the database degraded), answers the history 503 with Retry-After, and serves
the history again once the database is back, without a restart."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx

from livefeed.core.settings import Settings
from livefeed.ops.faultproxy import FaultProxy
from tests.gateway.livehelp import SECRET, WsClient, token, ws_url
from tests.helpers.waiting import eventually
from tests.procs import running, start_gateway


def an_event(user: str) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "user_id": user, "subject": "while PG is away",
                       "sender": "a@example.com",
                       "received_at": datetime.now(UTC).isoformat()}).encode()


async def test_gateway_starts_and_serves_ingest_without_postgres(
        settings_factory: Callable[..., Settings], database_url: str, tmp_path: Path) -> None:
    async with FaultProxy.for_url(database_url) as proxy:
        proxy.cut()  # PostgreSQL unreachable before the gateway starts
        settings = settings_factory(secret=SECRET, database_url=proxy.url_for(database_url))
        proc, base = await anyio.to_thread.run_sync(start_gateway, settings, tmp_path)
        with running(proc):
            admin = {"authorization": f"Bearer {token('ops', admin=True)}"}
            user = {"authorization": f"Bearer {token('pg-away')}"}
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                body = ready.json()
                assert body["failed"] == [] and body["degraded"] == ["postgres"]
                assert body["checks"]["redis"] == "ok" and body["checks"]["postgres"] != "ok"

                posted = await http.post("/v1/events", content=an_event("pg-away"),
                                         headers={**admin, "content-type": "application/json"})
                assert posted.status_code == 202, posted.text

                feed = await http.get("/v1/feed", headers=user)
                assert feed.status_code == 503, feed.text
                assert feed.headers["retry-after"] == "5"
                assert "PostgreSQL" in feed.json()["error"]

                client = await WsClient.open(ws_url(base, "pg-away"))
                await client.until(lambda c: "hello" in c.types(), timeout=30)
                await client.close()

                proxy.restore()

                async def history_back() -> bool:
                    r = await http.get("/v1/feed", headers=user)
                    return r.status_code == 200

                await eventually(history_back, what="the history back", interval=0.2)
                assert (await http.get("/readyz")).json()["degraded"] == []
            log = proc.output()
            assert "PostgreSQL does not answer" in log and "starting anyway" in log
            assert "Traceback" not in log

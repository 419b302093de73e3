"""Several gateway processes against one Redis: clients switch between them with no gap
and no duplicate; `--workers` drains every child; and the whole path from POST /v1/events
through the fanout consumer to a WebSocket."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from livefeed.core import auth
from livefeed.core.embedded import free_port
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.core.settings import Settings
from tests.gateway.livehelp import SECRET, Gateways, WsClient, assert_exact, publish, ws_url
from tests.helpers.frames import closed_code
from tests.helpers.waiting import eventually
from tests.procs import Proc, wait_http

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_client_switches_gateways_mid_stream_without_gap_or_duplicate(
    gateways: Gateways, redis: Any, keys: Keys
) -> None:
    _, url1 = gateways.start()
    _, url2 = gateways.start()
    log = EventLog(redis, keys, feed_maxlen=10_000, dedupe_ttl_s=600)
    published: list[str] = []
    done = anyio.Event()

    async def publisher() -> None:
        for i in range(60):
            published.extend(await publish(log, "alice", 5, start=5 * i))
            await anyio.sleep(0.01)
        done.set()

    got: list[str] = []
    first = await WsClient.open(ws_url(url1, "alice"))
    await first.until(lambda c: c.types() == ["hello"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(publisher)
        hops = [url2, url1, url2]
        client = first
        for hop in hops:
            await client.until_events(len(client.events()) + 40)
            await client.close()
            got += client.events()
            # Events keep arriving while this client is away; it comes back elsewhere.
            await anyio.sleep(0.05)
            client = await WsClient.open(ws_url(hop, "alice", got[-1]))
            await client.until(lambda c: "recovered" in c.types())
        await done.wait()
        await client.until(lambda c: (got + c.events())[-1:] == published[-1:])
        await client.close()
        got += client.events()
    assert_exact(got, published)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def test_workers_share_a_port_and_all_drain_on_sigterm(
    settings_factory: Callable[..., Settings], tmp_path: Path, redis: Any, keys: Keys
) -> None:
    port = free_port()
    proc = Proc(["gateway", "--port", str(port), "--workers", "2"],
                settings_factory(secret=SECRET), tmp_path / "logs").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc=proc)
        await eventually(lambda: len(children(proc.pid)) >= 2, what="two workers",
                         procs=(proc,), interval=0.1)
        workers = children(proc.pid)
        log = EventLog(redis, keys, feed_maxlen=10_000, dedupe_ttl_s=600)
        clients = [await WsClient.open(ws_url(url, f"u{i}")) for i in range(6)]
        for c in clients:
            await c.until(lambda c: c.types() == ["hello"])
        ids = {f"u{i}": await publish(log, f"u{i}", 3) for i in range(6)}
        for i, c in enumerate(clients):
            await c.until_events(3)
            assert_exact(c.events(), ids[f"u{i}"])
        sse_ended = anyio.Event()

        async def sse() -> None:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client:
                tok = auth.mint(SECRET, "u0")
                async with aconnect_sse(client, "GET", f"{url}/v1/sse",
                                        headers={"authorization": f"Bearer {tok}"}) as source:
                    async for _ in source.aiter_sse():
                        pass
            sse_ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sse)
            await anyio.sleep(0.5)
            code = await anyio.to_thread.run_sync(proc.terminate)
            with anyio.fail_after(30):
                await sse_ended.wait()
        assert code == 0
        for c in clients:
            assert await closed_code(c) == 1012
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
                f"/proc/{pid}/status").read_text()
    finally:
        proc.kill()


async def test_post_to_websocket_through_the_fanout_consumer(
    gateways: Gateways, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    _, url = gateways.start()
    settings = settings_factory(secret=SECRET)
    fanout = Proc(["consumer", "fanout"], settings, tmp_path / "logs").start()
    try:
        client = await WsClient.open(ws_url(url, "carol"))
        await client.until(lambda c: c.types() == ["hello"])
        events = [{"id": str(uuid.uuid4()), "user_id": "carol", "subject": f"news {i}",
                   "sender": "letters@example.com",
                   "received_at": datetime.now(UTC).isoformat()} for i in range(20)]
        body = json.dumps(events).encode()
        assert settings.webhook_secret is not None
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{url}/v1/events", content=body,
                                headers={**auth.signature_headers(settings.webhook_secret, body),
                                         "content-type": "application/json"})
        assert r.status_code == 202, r.text
        await client.until_events(20, timeout=60)
        await client.close()
        got = [f["data"] for f in client.frames if f["type"] == "event"]
        assert [g["id"] for g in got] == [e["id"] for e in events]
        assert [g["subject"] for g in got] == [e["subject"] for e in events]
    finally:
        fanout.kill()

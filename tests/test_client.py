"""livefeed.client against real gateway processes: the subscriber resumes exactly across
a gateway killed under it and across token expiries (WebSocket and SSE), and the
publisher's retries through a Redis outage append every event once."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from livefeed.client import Event, Publisher, Reset, subscribe
from livefeed.client import publish as publish_mod
from livefeed.core import auth
from livefeed.core.embedded import free_port
from livefeed.core.keys import Keys
from livefeed.core.settings import Settings
from livefeed.ops.faultproxy import FaultProxy
from tests.gateway.livehelp import SECRET, token
from tests.helpers.streams import ingest_rows
from tests.helpers.waiting import eventually
from tests.procs import Proc, start_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def newsletters(user: str, n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [{"user_id": user, "subject": f"issue {i}", "sender": "news@example.com",
             "received_at": now} for i in range(n)]


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_subscriber_resumes_exactly_across_a_gateway_killed_under_it(
        settings_factory: Callable[..., Settings], tmp_path: Path, transport: str) -> None:
    settings = settings_factory(secret=SECRET)
    assert settings.webhook_secret
    port = free_port()
    gw, url = start_gateway(settings, tmp_path, port=port)
    spare, other = start_gateway(settings, tmp_path)  # where events are posted meanwhile
    fanout = Proc(["consumer", "fanout"], settings, tmp_path).start()
    got: list[Event | Reset] = []
    try:
        async with anyio.create_task_group() as tg, Publisher(
                other, webhook_secret=settings.webhook_secret) as pub:
            async def follow() -> None:
                async for item in subscribe(url, token("carol"), transport=transport):
                    got.append(item)

            tg.start_soon(follow)
            await anyio.sleep(1.0)  # subscribed (hello) before the first event
            sent = (await pub.publish(newsletters("carol", 10))).ids
            await eventually(lambda: len(got) == 10, what="the first ten", procs=(fanout,))
            gw.kill()
            sent += (await pub.publish(newsletters("carol", 10))).ids
            gw, _ = start_gateway(settings, tmp_path, port=port)
            sent += (await pub.publish(newsletters("carol", 10))).ids
            await eventually(lambda: len(got) >= 30, what="all thirty", procs=(fanout,),
                             timeout=60)
            await anyio.sleep(0.5)  # a duplicate would arrive by now
            tg.cancel_scope.cancel()
    finally:
        gw.kill()
        spare.kill()
        fanout.kill()
    assert all(isinstance(item, Event) for item in got)
    assert [item.data["id"] for item in got if isinstance(item, Event)] == sent


async def test_publisher_retries_through_a_redis_outage_and_appends_each_event_once(
        settings_factory: Callable[..., Settings], redis_url: str, redis: Any, keys: Keys,
        tmp_path: Path) -> None:
    async with FaultProxy.for_url(redis_url) as proxy:
        settings = settings_factory(secret=SECRET, redis_url=proxy.url_for(redis_url))
        assert settings.webhook_secret
        # The proxy runs on this event loop: wait for the gateway in a thread.
        gw, url = await anyio.to_thread.run_sync(start_gateway, settings, tmp_path)
        try:
            async with Publisher(url, webhook_secret=settings.webhook_secret) as pub:
                proxy.cut()
                events = newsletters("dora", 5) + newsletters("erin", 5)
                async with anyio.create_task_group() as tg:
                    results = []

                    async def post() -> None:
                        results.append(await pub.publish(events))

                    tg.start_soon(post)
                    await anyio.sleep(1.5)  # several 503s answered meanwhile
                    assert not results
                    proxy.restore()
                first = results[0]
                assert first.accepted == first.ids and first.duplicates == []
                assert len(set(first.ids)) == 10 and all(uuid.UUID(i) for i in first.ids)
                # The same events again (a retry after a lost answer): all duplicates.
                again = await pub.publish([{**e, "id": i} for e, i in zip(events, first.ids,
                                                                         strict=True)])
                assert again.accepted == [] and again.duplicates == first.ids
        finally:
            gw.kill()
    stored = [fields[b"event_id"].decode() for _, fields in await ingest_rows(redis, keys)]
    assert sorted(stored) == sorted(first.ids)


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_subscriber_renews_an_expired_token_and_resumes_exactly(
        settings_factory: Callable[..., Settings], tmp_path: Path, transport: str) -> None:
    """Tokens living one second: the gateway closes 4003 (or ends SSE with `expired`)
    again and again; `get_token` is called each time and no event is lost or repeated."""
    settings = settings_factory(secret=SECRET, token_grace_s=0.2)
    assert settings.webhook_secret
    gw, url = start_gateway(settings, tmp_path)
    fanout = Proc(["consumer", "fanout"], settings, tmp_path).start()
    got: list[Event | Reset] = []
    minted = 0

    async def get_token() -> str:
        nonlocal minted
        minted += 1
        return token("fred", ttl_s=1)

    try:
        async with anyio.create_task_group() as tg, Publisher(
                url, webhook_secret=settings.webhook_secret) as pub:
            async def follow() -> None:
                async for item in subscribe(url, get_token=get_token, transport=transport):
                    got.append(item)

            tg.start_soon(follow)
            await anyio.sleep(1.0)  # subscribed (hello) before the first event
            sent: list[str] = []
            for _ in range(4):
                sent += (await pub.publish(newsletters("fred", 5))).ids
                want = len(sent)
                await eventually(lambda w=want: len(got) >= w, what="the events",
                                 procs=(fanout,), timeout=60)
                # Until the next expiry has passed: the next batch goes to a new connection.
                calls = minted
                await eventually(lambda c=calls: minted > c, what="a renewal", timeout=30)
            await anyio.sleep(0.5)  # a duplicate would arrive by now
            tg.cancel_scope.cancel()
    finally:
        gw.kill()
        fanout.kill()
    assert all(isinstance(item, Event) for item in got)
    assert [item.data["id"] for item in got if isinstance(item, Event)] == sent
    assert minted >= 5


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_subscriber_waits_out_a_connection_limit_then_resumes(
        settings_factory: Callable[..., Settings], tmp_path: Path, transport: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One connection per user: a second subscriber is refused (4029, SSE 429 with
    Retry-After), keeps waiting seconds rather than hammering, and gets in, exactly, once
    the first one leaves."""
    # The module (the package's `subscribe` attribute is the function of that name).
    subscribe_mod = importlib.import_module("livefeed.client.subscribe")

    monkeypatch.setattr(subscribe_mod, "LIMITED_WAIT_S", 0.5)
    settings = settings_factory(secret=SECRET, max_user_connections=1)
    assert settings.webhook_secret
    gw, url = start_gateway(settings, tmp_path)
    fanout = Proc(["consumer", "fanout"], settings, tmp_path).start()
    first: list[Event | Reset] = []
    second: list[Event | Reset] = []
    limited = 0
    real = subscribe_mod._Limited.__init__

    def counting(self: Any, after: float) -> None:
        nonlocal limited
        limited += 1
        real(self, after)

    monkeypatch.setattr(subscribe_mod._Limited, "__init__", counting)
    try:
        async with anyio.create_task_group() as tg, Publisher(
                url, webhook_secret=settings.webhook_secret) as pub:
            holder = anyio.CancelScope()

            async def hold() -> None:
                with holder:
                    async for item in subscribe(url, token("gina"), transport=transport):
                        first.append(item)

            async def wait_in() -> None:
                async for item in subscribe(url, token("gina"), transport=transport,
                                            last_id="0-0"):
                    second.append(item)

            tg.start_soon(hold)
            await anyio.sleep(1.0)  # the first holds the user's only connection
            sent = (await pub.publish(newsletters("gina", 3))).ids
            await eventually(lambda: len(first) == 3, what="the first's events",
                             procs=(fanout,))
            tg.start_soon(wait_in)
            await eventually(lambda: limited >= 2, what="the second refused, and retrying")
            assert second == []
            holder.cancel()  # the first leaves: the second gets in, from the start
            sent += (await pub.publish(newsletters("gina", 2))).ids
            await eventually(lambda: len(second) == 5, what="the second's events",
                             procs=(fanout,), timeout=60)
            await anyio.sleep(0.5)  # a duplicate would arrive by now
            tg.cancel_scope.cancel()
    finally:
        gw.kill()
        fanout.kill()
    assert [item.data["id"] for item in second if isinstance(item, Event)] == sent
    # Waits of seconds, not the backoff's milliseconds: a handful of refusals, not hundreds.
    assert limited < 30


def test_the_publisher_signs_like_the_gateway_checks() -> None:
    body = b'[{"user_id": "a"}]'
    headers = publish_mod.signature_headers("hook", body, 1_700_000_000)
    assert headers == auth.signature_headers("hook", body, 1_700_000_000)
    assert auth.check_signature("hook", body, headers["x-livefeed-signature"],
                                headers["x-livefeed-timestamp"], now=1_700_000_100) is None

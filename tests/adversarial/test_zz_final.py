"""Last in the package: connection churn and the leak check (the gateway's tasks, live
sessions, hub channels and listeners back to their baseline, as centrifuge's stress
suite checks), then the control client's tally and the gateway's log."""

from __future__ import annotations

import json
import time

import anyio
import httpx

from tests.adversarial.conftest import (
    CONTROL_FIGURES,
    TALLY,
    Target,
    gateway_log,
    gauges,
    sse_connect,
    token,
    ws_connect,
)
from tests.helpers.waiting import eventually

CHURN_WS = 60
CHURN_SSE = 20


async def churn(target: Target) -> None:
    """Open and end connections every way a client can: closed, dropped, mid-replay,
    hostile last ids, several tabs of one user, SSE streams cut off."""
    async def one_ws(i: int) -> None:
        last_id = ("²", "0-0", None, "1-0", "9" * 5000)[i % 5]
        conn = await ws_connect(target.base, token(f"adv-churn-{i % 7}"), last_id)
        with anyio.fail_after(30):
            await conn.recv()
        if i % 3 == 0:
            conn.transport.abort()  # gone without a close frame
        else:
            await conn.close()

    async def one_sse(i: int) -> None:
        async with httpx.AsyncClient(timeout=30) as http, sse_connect(
                http, target.base, token(f"adv-churn-{i % 4}"),
                headers={"last-event-id": ("²".encode(), b"0-0")[i % 2]}) as r:  # type: ignore[dict-item]
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break  # leaving the block drops the stream

    async with anyio.create_task_group() as tg:
        for i in range(CHURN_WS):
            tg.start_soon(one_ws, i)
        for i in range(CHURN_SSE):
            tg.start_soon(one_sse, i)


async def test_the_gauges_count_connections(target: Target) -> None:
    """Ten open connections of ten users show in every gauge (so the leak check below
    could see a leak), and are gone from them once closed."""
    baseline = target.baseline
    conns = [await ws_connect(target.base, token(f"adv-count-{i}")) for i in range(10)]
    try:
        for conn in conns:
            with anyio.fail_after(30):
                await conn.recv()

        async def counted() -> bool:
            now = await anyio.to_thread.run_sync(gauges, target.base)
            return all(now[name] == baseline[name] + 10 for name in (
                "livefeed_gateway_sessions", "livefeed_hub_channels", "livefeed_hub_listeners",
                'livefeed_clients{transport="ws"}')) and (
                now["livefeed_gateway_tasks"] > baseline["livefeed_gateway_tasks"])

        await eventually(counted, what="ten more of everything", interval=0.2)
    finally:
        for conn in conns:
            await conn.close()


async def test_no_leaks_after_churn(target: Target) -> None:
    baseline = target.baseline
    await churn(target)
    TALLY.record("churn", f"{CHURN_WS} ws + {CHURN_SSE} sse")

    async def back() -> bool:
        now = await anyio.to_thread.run_sync(gauges, target.base)
        CONTROL_FIGURES["gauges_after_churn"] = now
        return all(now[name] == value for name, value in baseline.items()
                   if name != "livefeed_gateway_tasks") and (
            now["livefeed_gateway_tasks"] <= baseline["livefeed_gateway_tasks"])

    await eventually(back, what=f"leak gauges back to {baseline}", interval=0.2, timeout=60)
    CONTROL_FIGURES["gauges_baseline"] = baseline


async def test_control_client_got_every_event_and_stayed_connected(target: Target) -> None:
    control = target.control
    control.stop_posting()
    deadline = time.monotonic() + 60
    while len(control.received) < len(control.accepted) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    CONTROL_FIGURES.update(control_posted=len(control.accepted),
                           control_received=len(control.received),
                           control_lost=len(set(control.accepted) - set(control.received)),
                           control_disconnects=0 if control.closed is None else 1)
    assert control.closed is None
    assert not control.post_failures
    assert control.received == control.accepted  # exact ids, once each, in order
    assert set(control.frames) == {"hello", "event"} and control.frames[0] == "hello"


def test_no_traceback_in_the_logs(target: Target) -> None:
    for name, text in (("gateway", gateway_log(target)),
                       ("fanout", target.fanout.log_path.read_text(errors="replace"))):
        assert "Traceback" not in text, f"{name}:\n{text[text.index('Traceback') - 500:][:3000]}"
        assert "Exception in ASGI" not in text
    TALLY.record("logs", "clean")
    json.dumps(CONTROL_FIGURES)  # the summary must serialise

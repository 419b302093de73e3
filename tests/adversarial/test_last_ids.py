"""Hostile `last_id` values over WebSocket (`?last_id=`) and SSE (`Last-Event-ID`).

Whatever the value, the client gets `hello`, then `recovered` or a `reset` saying why the
history cannot be replayed: a value that is no stream id is `reset` `unknown_id`
(docs/design.md "Frames"); never a dropped connection and a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livefeed.core import redis_client
from livefeed.core.eventlog import EventLog
from livefeed.schemas.frames import split_message
from tests.adversarial.conftest import TALLY, Target, sse_connect, token, ws_connect
from tests.gateway.livehelp import publish

USER = "adv-lastid"
U64 = 1 << 64

# Not stream ids at all: `reset` `unknown_id`.
NOT_IDS = [
    "99999999999999999999999-0", "²", "๙", "9" * 5000, "1-²", "๙-1", "１-1", "1-٣", "-1", "1-",
    "1--1", "abc", "1-1-1", " 1-1", "1-1 ", "\x00", "1-1\n", "1e3-0", "0x10-0", "+1-0",
    "1_0-0", "18446744073709551616-0", "0-18446744073709551616", "1" * 21, "\u202e1-0",
    "-", "+", "$", ">", "*", "' OR 1=1 --", "<script>alert(1)</script>", "%", "%00",
    "1.5-0", "0-0-0", "\ud7ff", "🙂",
]


@pytest.fixture(scope="module")
def feed_ids(target: Target) -> list[str]:
    """Three events in USER's feed stream (as the fan-out writes them)."""

    async def fill() -> list[str]:
        redis = redis_client.connect(target.settings.redis_url)
        try:
            log = EventLog(redis, target.keys, feed_maxlen=1000, dedupe_ttl_s=60)
            return await publish(log, USER, 3)
        finally:
            await redis.aclose()

    return anyio.run(fill)


def expectations(ids: list[str]) -> list[tuple[str, str]]:
    """(last_id, the frame after hello: `recovered:<count>` or `reset:<reason>`)."""
    first, last = ids[0], ids[-1]
    ms, seq = first.split("-")
    return [
        *[(v, "reset:unknown_id") for v in NOT_IDS],
        ("0-0", "recovered:3"), ("0", "recovered:3"), (first, "recovered:2"),
        (last, "recovered:0"), (f"000{ms}-00{seq}", "recovered:2"),
        ("1-0", "reset:trimmed"), ("1", "reset:trimmed"),
        (f"{U64 - 1}-{U64 - 1}", "reset:unknown_id"),
        (f"{int(ms) + 10**6}-0", "reset:unknown_id"),
    ]


async def ws_answer(target: Target, last_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hello of a WebSocket opened with `last_id`, and its `recovered` or `reset`
    (after the replayed events)."""
    conn = await ws_connect(target.base, token(USER), last_id)
    try:
        with anyio.fail_after(20):
            frames: list[dict[str, Any]] = []
            while len(frames) < 2 or frames[-1]["type"] == "event":
                frames += [json.loads(f) for f in split_message(await conn.recv())]
            hello, after = frames[0], next(f for f in frames[1:] if f["type"] != "event")
        return hello, after
    finally:
        await conn.close()


def answer_of(frame: dict[str, Any]) -> str:
    if frame["type"] == "recovered":
        return f"recovered:{frame['count']}"
    if frame["type"] == "reset":
        return f"reset:{frame['reason']}"
    return frame["type"]


async def test_last_ids_over_websocket(target: Target, feed_ids: list[str]) -> None:
    wrong = []
    for last_id, want in expectations(feed_ids):
        hello, after = await ws_answer(target, last_id)
        got = answer_of(after)
        TALLY.record("last_id ws", got)
        if hello["type"] != "hello" or got != want:
            wrong.append((last_id[:40], hello["type"], got, want))
    assert not wrong


async def sse_frames(http: httpx.AsyncClient, target: Target, headers: dict[str, str],
                     params: dict[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
    """The frames of an SSE stream up to its `recovered` or `reset`, events left out."""
    async with sse_connect(http, target.base, token(USER), headers, params) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                frame = json.loads(line[len("data: "):])
                if frame["type"] != "event":
                    yield frame
                if frame["type"] in ("recovered", "reset"):
                    return


async def test_last_ids_over_sse(target: Target, feed_ids: list[str]) -> None:
    """As `Last-Event-ID` (UTF-8 bytes where not ASCII; a header cannot hold control
    characters) and as the `last_id` query parameter."""
    wrong = []
    async with httpx.AsyncClient(timeout=20) as http:
        for last_id, want in expectations(feed_ids):
            tries: list[tuple[dict[str, Any], dict[str, str] | None]] = [
                ({}, {"last_id": last_id})]
            if not re.search(r"[\x00-\x1f\x7f]", last_id) and last_id.strip() == last_id:
                tries.append(({"last-event-id": last_id.encode()}, None))  # type: ignore[dict-item]
            for headers, params in tries:
                with anyio.fail_after(20):
                    got_frames = [f async for f in sse_frames(http, target, headers, params)]
                got = answer_of(got_frames[1])
                TALLY.record("last_id sse", got)
                if got_frames[0]["type"] != "hello" or got != want:
                    wrong.append((last_id[:40], "header" if headers else "query", got, want))
    assert not wrong


_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)


def is_stream_id(text: str) -> bool:
    """The oracle, written apart from the gateway's parser."""
    m = _ID.fullmatch(text)
    return m is not None and int(m[1]) < U64 and int(m[2] or 0) < U64


last_ids = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A[0-9]{1,24}(-[0-9]{1,24})?\Z"),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=8),
    st.builds(lambda a, b: f"{a}-{b}", st.integers(-5, 2**70), st.integers(-5, 2**70)),
)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(last_id=last_ids)
async def test_generated_last_ids(target: Target, feed_ids: list[str], last_id: str) -> None:
    """400 generated values: no stream id -> `reset` `unknown_id`; a stream id -> a
    replay or a reset with its reason; empty -> no last id (hello carries the start)."""
    hello, after = (await ws_answer(target, last_id)) if last_id else (None, None)
    if not last_id:
        conn = await ws_connect(target.base, token(USER), last_id)
        with anyio.fail_after(20):
            hello = json.loads(await conn.recv())
        await conn.close()
        assert hello["type"] == "hello" and hello["last_id"] == feed_ids[-1]
        TALLY.record("last_id ws (generated)", "hello")
        return
    assert hello is not None and after is not None and hello["type"] == "hello"
    got = answer_of(after)
    TALLY.record("last_id ws (generated)", got)
    if is_stream_id(last_id):
        assert got.startswith("recovered:") or got in (
            "reset:trimmed", "reset:unknown_id"), (last_id, got)
    else:
        assert got == "reset:unknown_id", (last_id, got)

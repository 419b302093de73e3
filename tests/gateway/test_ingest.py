"""POST /v1/events in process (httpx.ASGITransport), in both delivery modes."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from livefeed.core import auth
from livefeed.core.keys import Keys
from livefeed.core.settings import Settings
from livefeed.ops.faultproxy import FaultProxy
from livefeed.schemas.event import MAX_BATCH_EVENTS, MAX_BODY_BYTES
from tests.gateway.livehelp import app_client
from tests.helpers.streams import ingest_length, ingest_rows

pytestmark = pytest.mark.anyio
modes = pytest.mark.parametrize("mode", ["streams", "pubsub"])
WEBHOOK = "test-webhook-secret"
SECRET = "ingest-test-secret-long-enough-for-hs256!"


def event(**over: Any) -> dict[str, Any]:
    base = {"user_id": "alice", "subject": "Weekly digest", "sender": "news@example.com",
            "received_at": dt.datetime.now(dt.UTC).isoformat()}
    return {**base, **over}


def signed(body: bytes) -> dict[str, str]:
    return {**auth.signature_headers(WEBHOOK, body), "content-type": "application/json"}


@pytest.fixture
async def gateway(settings_factory: Callable[..., Settings]) -> Any:
    """`await gateway(mode)` -> client, closed at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(mode: str, **over: Any) -> httpx.AsyncClient:
            settings = settings_factory(delivery=mode, secret=SECRET, **over)
            client, _ = await stack.enter_async_context(app_client(settings))
            return client

        yield make


async def post(client: httpx.AsyncClient, payload: Any) -> httpx.Response:
    body = msgspec.json.encode(payload)
    return await client.post("/v1/events", content=body, headers=signed(body))


@modes
async def test_accepts_events_and_reports_duplicates(
    mode: str, gateway: Any, redis: Any, keys: Keys, pool: Any
) -> None:
    client = await gateway(mode)
    known = str(uuid.uuid4())
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.live("alice"))
    await pubsub.get_message(timeout=1)
    r = await post(client, [event(id=known), event(user_id="bob")])
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["ids"][0] == known and len(body["ids"]) == 2
    assert body["accepted"] == body["ids"] and body["duplicates"] == []
    first = msgspec.json.decode(r.request.content)[0]
    again = await post(client, [first, first])
    assert again.status_code == 202
    assert again.json() == {"ids": [known, known], "accepted": [], "duplicates": [known, known]}
    if mode == "streams":
        rows = await ingest_rows(redis, keys)
        assert [f[b"event_id"].decode() for _, f in rows] == body["ids"]
        assert rows[1][1][b"user"] == b"bob"
    else:
        ids = {str(r["id"]) for r in await pool.fetch("SELECT id FROM newsletters")}
        assert ids == set(body["ids"])
        assert await ingest_length(redis, keys) == 0
        msg = None
        with anyio.move_on_after(3):
            while msg is None:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        assert msg is not None
        assert msgspec.json.decode(msg["data"])["data"]["id"] == known
    await pubsub.aclose()


async def stored(mode: str, redis: Any, keys: Keys, pool: Any) -> list[tuple[str, str, str]]:
    """(user, event id, subject) of every event that went in: the ingest stream's entries
    (streams) or the rows (pubsub), in order."""
    if mode == "streams":
        return [(f[b"user"].decode(), f[b"event_id"].decode(),
                 msgspec.json.decode(f[b"data"])["subject"])
                for _, f in await ingest_rows(redis, keys)]
    return [(r["user_id"], str(r["id"]), r["subject"]) for r in await pool.fetch(
        "SELECT user_id, id, subject FROM newsletters ORDER BY inserted_at, user_id")]


@modes
async def test_event_ids_are_scoped_per_user_and_a_reuse_with_other_content_is_a_conflict(
    mode: str, gateway: Any, redis: Any, keys: Keys, pool: Any
) -> None:
    client = await gateway(mode)
    j, k = str(uuid.uuid4()), str(uuid.uuid4())
    first = event(id=j, subject="First")
    # the same event twice in one request: one event, the second copy a duplicate
    r = await post(client, [first, first])
    assert r.status_code == 202, r.text
    assert r.json() == {"ids": [j, j], "accepted": [j], "duplicates": [j]}
    # the same id for another user names another event
    r = await post(client, event(id=j, user_id="bob", subject="Bob's"))
    assert r.json() == {"ids": [j], "accepted": [j], "duplicates": []}
    want = [("alice", j, "First"), ("bob", j, "Bob's")]
    assert await stored(mode, redis, keys, pool) == want
    # the same id twice in one request with different content: refused as a whole
    r = await post(client, [event(id=k), event(id=k, subject="Other")])
    assert r.status_code == 409
    assert r.json() == {"error": "conflict", "path": "$[1].id", "detail": (
        f"event {k} of user alice appears earlier in this request with different content: "
        "an id names one event of its user; resend the same content to retry, or use a new "
        "id")}
    # a later reuse with different content, alone or among new events
    r = await post(client, {**first, "subject": "Changed"})
    assert r.status_code == 409 and r.json()["path"] == "$.id"
    assert r.json()["detail"].startswith(f"event {j} of user alice was accepted before with "
                                         "different content: ")
    r = await post(client, [event(id=k), event(user_id="bob"), {**first, "preview": "p"}])
    assert r.status_code == 409 and r.json()["path"] == "$[2].id"
    assert await stored(mode, redis, keys, pool) == want
    # the first content again is a retry: a duplicate
    r = await post(client, [first])
    assert r.json() == {"ids": [j], "accepted": [], "duplicates": [j]}
    assert await stored(mode, redis, keys, pool) == want


@modes
async def test_auth(mode: str, gateway: Any) -> None:
    client = await gateway(mode)
    body = msgspec.json.encode(event())
    secret = SECRET
    cases = {
        "none": {},
        "bad signature": {"x-livefeed-signature": "sha256=" + "0" * 64},
        "signature of another body": signed(b"{}"),
        "user token": {"authorization": f"Bearer {auth.mint(secret, 'alice')}"},
        "token of another secret": {
            "authorization": f"Bearer {auth.mint('another-secret-' + 'x' * 32, 'a', admin=True)}"
        },
    }
    for name, headers in cases.items():
        r = await client.post("/v1/events", content=body, headers=headers)
        assert r.status_code == 401, name
    admin = {"authorization": f"Bearer {auth.mint(secret, 'ops', admin=True)}"}
    assert (await client.post("/v1/events", content=body, headers=admin)).status_code == 202
    assert (await client.post("/v1/events", content=body, headers=signed(body))).status_code == 202
    # An admin token in the URL is refused: only the header counts.
    token = admin["authorization"].removeprefix("Bearer ")
    r = await client.post(f"/v1/events?token={token}", content=body)
    assert r.status_code == 401 and "Authorization" in r.json()["detail"]


def timed(body: bytes, at: float) -> dict[str, str]:
    return auth.signature_headers(WEBHOOK, body, int(at))


async def test_signatures_carry_a_timestamp_within_the_tolerance(gateway: Any) -> None:
    client = await gateway("streams")
    now = time.time()
    # 10 s either side of the 300 s tolerance: a timestamp is whole seconds (`int(at)`
    # drops up to one) and the requests take time, so 301 s ahead was sometimes 300.
    cases = {
        "good": (timed, now, 202),
        "a little off (clocks)": (timed, now - 290, 202),
        "old": (timed, now - 310, 401),
        "future": (timed, now + 310, 401),
    }
    for name, (sign, at, status) in cases.items():
        body = msgspec.json.encode(event())
        r = await client.post("/v1/events", content=body, headers=sign(body, at))
        assert r.status_code == status, (name, r.text)
        if status == 401:
            assert "timestamp" in r.json()["detail"], name
    body = msgspec.json.encode(event())
    # The timestamp is signed: moving it to now breaks the signature.
    moved = {**timed(body, now - 600), auth.TIMESTAMP_HEADER: str(int(now))}
    r = await client.post("/v1/events", content=body, headers=moved)
    assert r.status_code == 401 and "does not match" in r.json()["detail"]
    for bad in ("", "soon", "12.5"):
        r = await client.post("/v1/events", content=body,
                              headers={**timed(body, now), auth.TIMESTAMP_HEADER: bad})
        assert r.status_code == 401, bad
    untimed = {auth.SIGNATURE_HEADER: auth.untimed_signature(WEBHOOK, body)}
    r = await client.post("/v1/events", content=body, headers=untimed)
    assert r.status_code == 401 and "untimed" in r.json()["detail"]


async def test_the_untimed_scheme_only_behind_its_setting(gateway: Any) -> None:
    client = await gateway("streams", allow_untimed_signatures=True)
    body = msgspec.json.encode(event())
    untimed = {auth.SIGNATURE_HEADER: auth.untimed_signature(WEBHOOK, body)}
    assert (await client.post("/v1/events", content=body, headers=untimed)).status_code == 202
    wrong = {auth.SIGNATURE_HEADER: auth.untimed_signature(WEBHOOK, b"other")}
    assert (await client.post("/v1/events", content=body, headers=wrong)).status_code == 401
    # Timed signatures still work, and still expire.
    body = msgspec.json.encode(event())
    assert (await client.post("/v1/events", content=body,
                              headers=timed(body, time.time()))).status_code == 202
    assert (await client.post("/v1/events", content=body,
                              headers=timed(body, time.time() - 400))).status_code == 401


async def test_a_captured_request_replayed_after_the_tolerance_is_refused(
    gateway: Any, redis: Any, keys: Keys
) -> None:
    client = await gateway("streams", signature_tolerance_s=1)
    body = msgspec.json.encode(event(id=str(uuid.uuid4())))
    captured = {**signed(body)}
    assert (await client.post("/v1/events", content=body, headers=captured)).status_code == 202
    # Within the window a replay is a duplicate; once the window passed, it is refused.
    answer = (await client.post("/v1/events", content=body, headers=captured)).json()
    assert answer["accepted"] == [] and len(answer["duplicates"]) == 1
    ts = int(captured[auth.TIMESTAMP_HEADER])
    while time.time() <= ts + 1:
        await anyio.sleep(0.1)
    await anyio.sleep(1.0)  # whole seconds: past ts + tolerance for sure
    r = await client.post("/v1/events", content=body, headers=captured)
    assert r.status_code == 401 and "replayed" in r.json()["detail"]
    assert await ingest_length(redis, keys) == 1


@modes
async def test_bad_input(mode: str, gateway: Any) -> None:
    client = await gateway(mode)
    r = await client.post("/v1/events", content=b"{not json", headers=signed(b"{not json"))
    assert r.status_code == 400 and r.json()["error"] == "not_json"
    r = await post(client, [event(), event(user_id="no spaces allowed")])
    assert r.status_code == 422 and r.json()["path"] == "$[1].user_id"
    r = await post(client, event(subject="x" * 999))
    assert r.status_code == 422 and r.json()["path"] == "$.subject"
    r = await post(client, event(extra="field"))
    assert r.status_code == 422
    r = await post(client, [])
    assert r.status_code == 422
    r = await post(client, [event()] * (MAX_BATCH_EVENTS + 1))
    assert r.status_code == 413 and r.json()["error"] == "too_many"


@modes
async def test_body_size_is_capped_whatever_content_length_says(mode: str, gateway: Any) -> None:
    client = await gateway(mode)
    big = b"[" + b" " * MAX_BODY_BYTES + b"]"
    r = await client.post("/v1/events", content=big, headers=signed(big))
    assert r.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed, then cut off
        for _ in range(20):
            yield b" " * 65536

    r = await client.post("/v1/events", content=chunks(), headers=signed(b""))
    assert r.status_code == 413


@modes
async def test_unavailable_backend_answers_503_and_a_retry_is_safe(
    mode: str, gateway: Any, redis_url: str, database_url: str, redis: Any, keys: Keys,
    pool: Any
) -> None:
    url = redis_url if mode == "streams" else database_url
    async with FaultProxy.for_url(url) as proxy:
        over = ({"redis_url": proxy.url_for(redis_url)} if mode == "streams"
                else {"database_url": proxy.url_for(database_url)})
        client = await gateway(mode, **over)
        payload = [event(id=str(uuid.uuid4())) for _ in range(3)]
        proxy.cut()
        r = await post(client, payload)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        proxy.restore()
        r = await post(client, payload)
        assert r.status_code == 202 and len(r.json()["accepted"]) == 3
    if mode == "streams":
        assert await ingest_length(redis, keys) == 3
    else:
        assert await pool.fetchval("SELECT count(*) FROM newsletters") == 3


@modes
@pytest.mark.parametrize(
    ("over", "field"),
    [({"subject": "a\x00b"}, "subject"), ({"sender": "\x00"}, "sender"),
     ({"category": "news\x00"}, "category"), ({"preview": "x" * 10 + "\x00"}, "preview"),
     ({"received_at": "9999-12-31T23:59:59-23:59"}, "received_at"),
     ({"received_at": "0001-01-01T00:00:00+01:00"}, "received_at"),
     ({"user_id": "alice\n"}, "user_id")],
)
async def test_refuses_what_postgres_cannot_store_with_the_path(
    mode: str, over: dict[str, str], field: str, gateway: Any, redis: Any, keys: Keys,
    pool: Any
) -> None:
    client = await gateway(mode)
    r = await post(client, [event(), event(), event(), event(**over)])
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid" and body["path"] == f"$[3].{field}"
    assert set(body) == {"error", "detail", "path"}
    r = await post(client, event(**over))
    assert r.status_code == 422 and r.json()["path"] == f"$.{field}"
    # Nothing of the refused requests was accepted.
    assert await ingest_length(redis, keys) == 0
    assert await pool.fetchval("SELECT count(*) FROM newsletters") == 0

"""Property: every event ingest answers 202 for is stored by persist; nothing answers 5xx.

Valid-looking events with the inputs that once broke this (NUL, times whose UTC date leaves
years 1-9999, trailing newlines in user ids, lengths at the limits, any unicode) go to
the in-process gateway, then the persist handler runs on what reached the ingest stream,
against the real Redis and PostgreSQL (in `pubsub` mode ingest inserts the rows itself).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from livefeed.consumers.persist import PersistHandler
from livefeed.core import auth
from livefeed.core.groupstream import Entry, Raw, ref, split_ref, to_entry
from livefeed.core.keys import Keys
from livefeed.core.settings import Settings
from livefeed.schemas.event import USER_ID_PATTERN
from tests.gateway.livehelp import app_client

pytestmark = pytest.mark.anyio
WEBHOOK = "property-webhook-secret"

offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m)))
any_char = st.characters(codec="utf-8")  # NUL included; surrogates cannot be UTF-8
clean_char = st.characters(codec="utf-8", exclude_characters="\x00")
FIELDS = {"subject": 998, "sender": 320, "category": 64, "preview": 2000}


def text(limit: int, chars: st.SearchStrategy[str] = clean_char) -> st.SearchStrategy[str]:
    """Any unicode up to `limit` characters, often right at it."""
    return st.one_of(
        st.text(chars, max_size=12),
        st.tuples(chars, st.integers(limit - 2, limit)).map(lambda t: t[0] * t[1]),
    )


def broken_text(limit: int) -> st.SearchStrategy[str]:
    """Text with a NUL somewhere, or one character too long."""
    return st.one_of(
        st.tuples(st.text(any_char, max_size=6), st.text(any_char, max_size=6))
        .map(lambda t: t[0] + "\x00" + t[1]),
        st.tuples(clean_char, st.just(limit + 1)).map(lambda t: t[0] * t[1]),
    )


def iso(t: dt.datetime) -> str:
    return t.isoformat()


def near_an_end(last: bool, us: int, tz: dt.tzinfo) -> str:
    end = dt.datetime.max if last else dt.datetime.min
    return iso((end + (-1 if last else 1) * dt.timedelta(microseconds=us)).replace(tzinfo=tz))


times = st.one_of(
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                 timezones=offsets).map(iso),
    st.sampled_from(["0001-01-01T00:00:00-00:01", "9999-12-31T23:59:59+00:01",
                     "0001-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999998Z"]),
)
broken_times = st.one_of(
    st.sampled_from(["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"]),
    # Within a day of either end, with any offset: the UTC date may leave the range.
    st.builds(near_an_end, st.booleans(), st.integers(0, 86_400 * 10**6), offsets),
)
user_ids = st.from_regex(USER_ID_PATTERN)
broken_user_ids = st.sampled_from(["alice\n", "", "a" * 129, "al ice", "\u00e9", "a\x00"])


@st.composite
def newsletters(draw: st.DrawFn) -> dict[str, Any]:
    """A valid-looking event; one in four has one field broken (which may still be valid)."""
    broken = draw(st.sampled_from([None, None, None, "field"]))
    if broken:
        broken = draw(st.sampled_from(["user_id", "received_at", *FIELDS]))
    e: dict[str, Any] = {
        "user_id": draw(broken_user_ids if broken == "user_id" else user_ids),
        "received_at": draw(broken_times if broken == "received_at" else times),
    }
    for name, limit in FIELDS.items():
        if name in ("subject", "sender") or name == broken or draw(st.booleans()):
            e[name] = draw(broken_text(limit) if name == broken else text(limit))
    if draw(st.booleans()):
        e["id"] = "fresh"  # a new uuid when posted: id reuse is not this test's subject
    return e


bodies = st.one_of(newsletters(), st.lists(newsletters(), min_size=1, max_size=4))


@pytest.fixture(params=["streams", "pubsub"])
async def gateway(request: pytest.FixtureRequest, settings_factory: Callable[..., Settings],
                  ) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """(delivery mode, client of the in-process gateway in that mode)."""
    async with contextlib.AsyncExitStack() as stack:
        s = settings_factory(webhook_secret=WEBHOOK, delivery=request.param)
        c, _ = await stack.enter_async_context(app_client(s))
        yield request.param, c


async def cursors(redis: Any, keys: Keys) -> list[str]:
    """The newest stream id of each partition's ingest stream ("0-0" where none)."""
    out = []
    for stream in keys.ingests:
        last = await redis.xrevrange(stream, count=1)
        out.append(last[0][0].decode() if last else "0-0")
    return out


async def new_entries(redis: Any, keys: Keys, after: list[str]) -> list[Entry]:
    """Entries appended to any partition after `after` (its `cursors`), partition by
    partition, in stream order within each."""
    out: list[Entry] = []
    for p, stream in enumerate(keys.ingests):
        for sid, fields in await redis.xrange(stream, min=f"({after[p]}"):
            entry = to_entry(Raw(ref(p, sid.decode()), fields))
            assert isinstance(entry, Entry), entry
            out.append(entry)
    return out


def same_instant(stored: dt.datetime, sent: str) -> bool:
    return stored.tzinfo is not None and stored == dt.datetime.fromisoformat(sent)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(body=bodies)
async def test_every_202_is_stored_and_nothing_answers_5xx(
    body: dict[str, Any] | list[dict[str, Any]], gateway: tuple[str, httpx.AsyncClient],
    redis: Any, keys: Keys, pool: asyncpg.Pool
) -> None:
    """streams: the persist handler writes what ingest appended; pubsub: ingest inserts."""
    mode, client = gateway
    sent = body if isinstance(body, list) else [body]
    for e in sent:
        if "id" in e:
            e["id"] = str(uuid.uuid4())
    raw = msgspec.json.encode(body)
    cursor = await cursors(redis, keys)
    rows_before = await pool.fetchval("SELECT count(*) FROM newsletters")

    r = await client.post("/v1/events", content=raw, headers={
        **auth.signature_headers(WEBHOOK, raw), "content-type": "application/json"})

    assert r.status_code in (202, 422), r.text
    answer = r.json()
    # What was tried, by answer (pytest --hypothesis-show-statistics).
    event(f"{r.status_code} {answer.get('path', '').split('.')[-1]}")
    entries = await new_entries(redis, keys, cursor)
    if r.status_code == 422:
        assert set(answer) == {"error", "detail", "path"} and answer["path"].startswith("$")
        # Refused means nothing of the request was taken.
        assert entries == []
        assert await pool.fetchval("SELECT count(*) FROM newsletters") == rows_before
        return
    accepted = answer["accepted"]
    assert len(accepted) == len(sent)
    if mode == "streams":
        # each accepted event once, in its user's partition, in request order there (the
        # order partitions do not share is not defined)
        assert len(entries) == len(accepted)
        for p in range(keys.count):
            assert [e.event_id for e in entries if split_ref(e.id)[0] == p] == [
                eid for eid, e in zip(accepted, sent, strict=True)
                if keys.partition_of(e["user_id"]) == p]
        assert await PersistHandler(pool).handle(entries) == {}
    rows = {str(row["id"]): row for row in await pool.fetch(
        "SELECT id, user_id, subject, sender, category, received_at, preview "
        "FROM newsletters WHERE id = ANY($1::uuid[])", accepted)}
    assert set(rows) == set(accepted)
    for eid, e in zip(accepted, sent, strict=True):
        row = rows[eid]
        assert (row["user_id"], row["subject"], row["sender"], row["category"],
                row["preview"]) == (e["user_id"], e["subject"], e["sender"],
                                    e.get("category"), e.get("preview"))
        assert same_instant(row["received_at"], e["received_at"]), (row, e)

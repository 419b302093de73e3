"""Hostile `before` cursors and `limit`s on `GET /v1/feed`: 400 with a reason, never 500."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversarial.conftest import TALLY, Target, auth_headers, token

USER = "adv-feed"
ZERO = "00000000-0000-0000-0000-000000000000"


def cursor(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# (name, query, status)
QUERIES: list[tuple[str, dict[str, str], int]] = [
    ("no cursor", {}, 200),
    ("a cursor", {"before": cursor(["2026-01-01T00:00:00Z", ZERO])}, 200),
    ("a cursor with an offset", {"before": cursor(["2026-01-01T00:00:00+05:00", ZERO])}, 200),
    ("year 1 in UTC", {"before": cursor(["0001-01-01T00:00:00Z", ZERO])}, 200),
    ("before year 1 in UTC", {"before": cursor(["0001-01-01T00:00:00+14:00", ZERO])}, 400),
    ("past 9999 in UTC", {"before": cursor(["9999-12-31T23:59:59-14:00", ZERO])}, 400),
    ("no offset", {"before": cursor(["2026-01-01T00:00:00", ZERO])}, 400),
    ("year 10000", {"before": cursor(["10000-01-01T00:00:00Z", ZERO])}, 400),
    ("not a uuid", {"before": cursor(["2026-01-01T00:00:00Z", "x"])}, 400),
    ("a number", {"before": cursor(99999999999999999999999)}, 400),
    ("an object", {"before": cursor({"received_at": "2026-01-01T00:00:00Z", "id": ZERO})},
     400),
    ("three items", {"before": cursor(["2026-01-01T00:00:00Z", ZERO, 1])}, 400),
    ("empty array", {"before": cursor([])}, 400),
    ("null", {"before": cursor(None)}, 400),
    ("not base64", {"before": "!!!!"}, 400),
    ("base64 of garbage", {"before": cursor(b"\xff\xfe\x00")}, 400),
    ("unicode", {"before": "²๙🙂"}, 400),
    ("5,000 chars", {"before": "A" * 5000}, 400),
    ("nested deep", {"before": cursor(b"[" * 5000 + b"]" * 5000)}, 400),
    ("padding only", {"before": "===="}, 400),
    ("limit 0", {"limit": "0"}, 400),
    ("limit 201", {"limit": "201"}, 400),
    ("limit -1", {"limit": "-1"}, 400),
    ("limit ²", {"limit": "²"}, 400),
    ("limit ๙", {"limit": "๙"}, 400),
    ("limit full-width", {"limit": "１０"}, 400),
    ("limit 5,000 digits", {"limit": "9" * 5000}, 400),
    ("limit 1_0", {"limit": "1_0"}, 400),
    ("limit spaces", {"limit": " 10 "}, 400),
    ("limit 1e2", {"limit": "1e2"}, 400),
    ("limit empty", {"limit": ""}, 400),
    ("limit 200", {"limit": "200"}, 200),
]


async def get_feed(target: Target, query: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=target.base, timeout=30) as http:
        return await http.get("/v1/feed", params=query, headers=auth_headers(token(USER)))


@pytest.mark.parametrize(("name", "query", "status"), QUERIES, ids=[q[0] for q in QUERIES])
async def test_hostile_query(target: Target, name: str, query: dict[str, str],
                             status: int) -> None:
    r = await get_feed(target, query)
    TALLY.record("feed cursor", r.status_code)
    assert r.status_code == status, r.text[:300]
    if status == 400:
        assert r.json()["error"].startswith(("before:", "limit:"))
    else:
        assert r.json()["items"] == [] and r.json()["next"] is None


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(cursor),
    st.tuples(st.datetimes(timezones=st.timezones()), st.uuids()).map(
        lambda t: cursor([t[0].isoformat(), str(t[1])])),
    st.tuples(st.text(max_size=30), st.text(max_size=40)).map(lambda t: cursor(list(t))),
), limit=st.one_of(st.none(), st.text(max_size=6), st.integers(-5, 300).map(str)))
async def test_generated_cursors(target: Target, before: str, limit: str | None) -> None:
    """Any cursor and limit: 200 or 400, never a 5xx."""
    query = {"before": before, **({"limit": limit} if limit is not None else {})}
    r = await get_feed(target, query)
    TALLY.record("feed cursor (generated)", r.status_code)
    assert r.status_code in (200, 400), (query, r.status_code, r.text[:300])


async def test_an_id_of_another_kind_is_no_user_id(target: Target) -> None:
    r = await get_feed(target, {"before": cursor(["2026-01-01T00:00:00Z", str(uuid.uuid4())])})
    TALLY.record("feed cursor", r.status_code)
    assert r.status_code == 200

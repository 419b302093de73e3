"""Hostile arguments to the admin API: ids, refs, durations, limits and bodies get a 4xx
with a reason (400 bad input, 404 nothing there), never a 500."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livefeed.core.keys import FANOUT_GROUP
from tests.adversarial.conftest import TALLY, Target, auth_headers

HUGE = "9" * 5000
U64 = 1 << 64

# (name, method, path, query, JSON body or raw bytes, status)
CALLS: list[tuple[str, str, str, dict[str, str], Any, int]] = [
    ("pending", "GET", "/admin/api/pending", {}, None, 200),
    ("pending of a group", "GET", "/admin/api/pending", {"group": FANOUT_GROUP}, None, 200),
    ("pending of no group", "GET", "/admin/api/pending", {"group": "nope"}, None, 404),
    ("pending group of markup", "GET", "/admin/api/pending", {"group": "[/oops]"}, None, 404),
    ("min_idle ๙s", "GET", "/admin/api/pending", {"min_idle": "๙s"}, None, 400),
    ("min_idle ²", "GET", "/admin/api/pending", {"min_idle": "²"}, None, 400),
    ("min_idle 5,000 digits", "GET", "/admin/api/pending", {"min_idle": HUGE}, None, 400),
    ("min_idle 400 digits of days", "GET", "/admin/api/pending", {"min_idle": "9" * 400 + "d"},
     None, 400),
    ("min_idle 3651d", "GET", "/admin/api/pending", {"min_idle": "3651d"}, None, 400),
    ("min_idle negative", "GET", "/admin/api/pending", {"min_idle": "-5s"}, None, 400),
    ("min_idle 1e3", "GET", "/admin/api/pending", {"min_idle": "1e3"}, None, 400),
    ("min_idle 3650d", "GET", "/admin/api/pending", {"min_idle": "3650d"}, None, 200),
    ("limit 0", "GET", "/admin/api/pending", {"limit": "0"}, None, 400),
    ("limit 10001", "GET", "/admin/api/pending", {"limit": "10001"}, None, 400),
    ("limit ๙", "GET", "/admin/api/pending", {"limit": "๙"}, None, 400),
    ("limit 5,000 digits", "GET", "/admin/api/pending", {"limit": HUGE}, None, 400),
    ("limit 2^64", "GET", "/admin/api/pending", {"limit": str(U64)}, None, 400),
    ("dead", "GET", "/admin/api/dead", {}, None, 200),
    ("dead limit ²", "GET", "/admin/api/dead", {"limit": "²"}, None, 400),
    ("dead after a ref", "GET", "/admin/api/dead", {"after": "0/1-0"}, None, 200),
    ("dead after ²/1-1", "GET", "/admin/api/dead", {"after": "²/1-1"}, None, 400),
    ("dead after 0/๙-1", "GET", "/admin/api/dead", {"after": "0/๙-1"}, None, 400),
    ("dead after past the partitions", "GET", "/admin/api/dead", {"after": "16/1-1"}, None,
     400),
    ("dead after 5,000 digits", "GET", "/admin/api/dead", {"after": f"{HUGE}/1-1"}, None,
     400),
    ("dead after an id past 2^64", "GET", "/admin/api/dead", {"after": f"0/{U64}-0"}, None,
     400),
    ("show 0/1-1", "GET", "/admin/api/dead/0/1-1", {}, None, 404),
    ("show ²/1-1", "GET", "/admin/api/dead/²/1-1", {}, None, 404),
    ("show 0/๙-1", "GET", "/admin/api/dead/0/๙-1", {}, None, 404),
    ("show 5,000 digits", "GET", f"/admin/api/dead/{HUGE}/1-1", {}, None, 404),
    ("show 0/99999999999999999999999-0", "GET", "/admin/api/dead/0/99999999999999999999999-0",
     {}, None, 404),
    ("show -", "GET", "/admin/api/dead/0/-", {}, None, 404),
    ("show +", "GET", "/admin/api/dead/0/+", {}, None, 404),
    ("claim no body", "POST", "/admin/api/claim", {}, b"", 400),
    ("claim not json", "POST", "/admin/api/claim", {}, b"{", 400),
    ("claim unknown field", "POST", "/admin/api/claim", {},
     {"group": FANOUT_GROUP, "min_idle": "1s", "x": 1}, 400),
    ("claim min_idle ๙", "POST", "/admin/api/claim", {},
     {"group": FANOUT_GROUP, "min_idle": "๙"}, 400),
    ("claim min_idle huge", "POST", "/admin/api/claim", {},
     {"group": FANOUT_GROUP, "min_idle": HUGE}, 400),
    ("claim limit 2^64", "POST", "/admin/api/claim", {},
     {"group": FANOUT_GROUP, "min_idle": "1s", "limit": U64}, 400),
    ("claim limit 10^30", "POST", "/admin/api/claim", {},
     {"group": FANOUT_GROUP, "min_idle": "1s", "limit": 10**30}, 400),
    ("claim limit 0", "POST", "/admin/api/claim", {},
     {"group": FANOUT_GROUP, "min_idle": "1s", "limit": 0}, 400),
    ("claim limit a float", "POST", "/admin/api/claim", {},
     {"group": FANOUT_GROUP, "min_idle": "1s", "limit": 1.5}, 400),
    ("claim no group", "POST", "/admin/api/claim", {}, {"group": "nope", "min_idle": "1s"},
     404),
    ("claim dry run to a name", "POST", "/admin/api/claim", {},
     {"group": FANOUT_GROUP, "min_idle": "3650d", "dry_run": True, "to": "[/oops]\x1b"}, 200),
    ("retry neither ids nor all", "POST", "/admin/api/dead/retry", {}, {}, 400),
    ("retry both", "POST", "/admin/api/dead/retry", {}, {"ids": ["0/1-1"], "all": True}, 400),
    ("retry ids not strings", "POST", "/admin/api/dead/retry", {}, {"ids": [1, None]}, 400),
    ("retry hostile ids", "POST", "/admin/api/dead/retry", {},
     {"ids": ["²/1-1", f"{HUGE}/1-1", "0/๙-1", "0/-", "", "/", "0/"]}, 200),
    ("drop hostile ids", "POST", "/admin/api/dead/drop", {},
     {"ids": ["²/1-1", f"{HUGE}/1-1", "0/๙-1", "0/+", f"0/{U64}-0"]}, 200),
    ("drop ids an object", "POST", "/admin/api/dead/drop", {}, {"ids": {"a": 1}}, 400),
    ("status", "GET", "/admin/api/status", {}, None, 200),
    ("gateway", "GET", "/admin/api/gateway", {}, None, 200),
]


async def call(target: Target, method: str, path: str, query: dict[str, str],
               payload: Any, headers: dict[str, Any] | None = None) -> httpx.Response:
    content = payload if isinstance(payload, bytes) or payload is None else json.dumps(
        payload).encode()
    async with httpx.AsyncClient(base_url=target.base, timeout=60) as http:
        return await http.request(method, path, params=query, content=content,
                                  headers=headers or auth_headers(target.admin()))


@pytest.mark.parametrize(("name", "method", "path", "query", "payload", "status"), CALLS,
                         ids=[c[0] for c in CALLS])
async def test_hostile_admin_call(target: Target, name: str, method: str, path: str,
                                  query: dict[str, str], payload: Any, status: int) -> None:
    r = await call(target, method, path, query, payload)
    TALLY.record("admin api", r.status_code)
    assert r.status_code == status, r.text[:300]
    if status >= 400:
        assert isinstance(r.json()["error"], str) and r.json()["error"]


async def test_hostile_ids_are_reported_missing(target: Target) -> None:
    r = await call(target, "POST", "/admin/api/dead/retry", {},
                   {"ids": ["²/1-1", "0/๙-1", "0/-"]})
    TALLY.record("admin api", r.status_code)
    assert [a["outcome"] for a in r.json()] == ["missing"] * 3


async def test_without_an_admin_token(target: Target) -> None:
    from tests.adversarial.conftest import token

    for headers, status in (({}, 401), ({"authorization": "Bearer " + "x" * 8000}, 401),
                            ({"authorization": "Bearer ²".encode()}, 401),
                            (auth_headers(token("not-admin")), 403)):
        r = await call(target, "GET", "/admin/api/status", {}, None, headers=headers or {
            "x-nothing": "1"})
        TALLY.record("admin api", r.status_code)
        assert r.status_code == status


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(min_idle=st.text(max_size=12), limit=st.text(max_size=8), after=st.text(max_size=30),
       ref=st.text(min_size=1, max_size=30).filter(lambda t: t not in (".", "..")))
async def test_generated_admin_args(target: Target, min_idle: str, limit: str, after: str,
                                    ref: str) -> None:
    for method, path, query in (
            ("GET", "/admin/api/pending", {"min_idle": min_idle, "limit": limit}),
            ("GET", "/admin/api/dead", {"after": after, "limit": limit}),
            ("GET", "/admin/api/dead/" + quote(ref, safe="/"), {})):
        r = await call(target, method, path, query, None)
        TALLY.record("admin api (generated)", r.status_code)
        assert r.status_code in (200, 400, 404), (path, query, r.status_code, r.text[:200])

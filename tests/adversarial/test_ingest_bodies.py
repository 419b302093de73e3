"""Hostile bodies to `POST /v1/events`: each gets its exact status and error code."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adversarial.conftest import TALLY, Target, auth_headers

CLS = "ingest body"


def ev(**fields: Any) -> dict[str, Any]:
    base = {"id": str(uuid.uuid4()), "user_id": "adv-ingest", "subject": "s",
            "sender": "a@example.com", "received_at": "2026-01-01T00:00:00Z"}
    return {**base, **fields}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


# (name, body, status, error code)
BODIES: list[tuple[str, bytes, int, str | None]] = [
    ("empty", b"", 400, "not_json"),
    ("not json", b"hello", 400, "not_json"),
    ("truncated", body(ev())[:-5], 400, "not_json"),
    ("invalid utf-8 in a text", body(ev(subject="@@")).replace(b"@@", b"\xff\xfe"), 400,
     "not_json"),
    ("lone surrogate", b'{"subject": "\\ud800"}', 400, "not_json"),
    ("nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000, 422, "invalid"),
    ("object nested 10,000 deep", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 422, "invalid"),
    ("null", b"null", 422, "invalid"),
    ("a number", b"1e999999", 422, "invalid"),
    ("huge integer", b"9" * 5000, 422, "invalid"),
    ("empty array", b"[]", 422, "invalid"),
    ("array of null", b"[null]", 422, "invalid"),
    ("missing fields", body({"user_id": "u"}), 422, "invalid"),
    ("unknown field", body(ev(extra=1)), 422, "invalid"),
    ("id not a uuid", body(ev(id="not-a-uuid")), 422, "invalid"),
    ("id a number", body(ev(id=99999999999999999999999)), 422, "invalid"),
    ("NUL in subject", body(ev(subject="a\x00b")), 422, "invalid"),
    ("subject 999 chars", body(ev(subject="x" * 999)), 422, "invalid"),
    ("user_id with newline", body(ev(user_id="alice\n")), 422, "invalid"),
    ("user_id unicode digits", body(ev(user_id="๙²")), 422, "invalid"),
    ("user_id 129 chars", body(ev(user_id="u" * 129)), 422, "invalid"),
    ("user_id empty", body(ev(user_id="")), 422, "invalid"),
    ("received_at naive", body(ev(received_at="2026-01-01T00:00:00")), 422, "invalid"),
    ("received_at past 9999 UTC", body(ev(received_at="9999-12-31T23:59:59-23:59")), 422,
     "invalid"),
    ("received_at before year 1 UTC", body(ev(received_at="0001-01-01T00:00:00+01:00")), 422,
     "invalid"),
    ("received_at year 10000", body(ev(received_at="10000-01-01T00:00:00Z")), 422, "invalid"),
    ("received_at garbage", body(ev(received_at="²๙")), 422, "invalid"),
    ("subject an object", body(ev(subject={"a": 1})), 422, "invalid"),
    ("1,001 events", body([ev() for _ in range(1001)]), 413, "too_many"),
    ("over 1 MiB", body(ev(subject="x" * (1024 * 1024 + 10))), 413, "too_large"),
    ("same id, other content", body([ev(id="00000000-0000-4000-8000-000000000001"),
                                     ev(id="00000000-0000-4000-8000-000000000001",
                                        subject="other")]), 409, "conflict"),
    ("hostile text is content", body(ev(subject="[/oops] \x1b[31m\u202e", sender="[/oops]")),
     202, None),
    ("one event", body(ev()), 202, None),
]


@pytest.mark.parametrize(("name", "raw", "status", "code"), BODIES, ids=[b[0] for b in BODIES])
async def test_hostile_body(target: Target, name: str, raw: bytes, status: int,
                            code: str | None) -> None:
    async with httpx.AsyncClient(base_url=target.base, timeout=30) as http:
        r = await http.post("/v1/events", content=raw, headers={
            **auth_headers(target.admin()), "content-type": "application/json"})
    TALLY.record(CLS, r.status_code)
    assert r.status_code == status, r.text[:300]
    if code is not None:
        assert r.json()["error"] == code


async def test_unauthenticated_bodies_are_401(target: Target) -> None:
    async with httpx.AsyncClient(base_url=target.base, timeout=30) as http:
        for headers in ({}, {"authorization": "Bearer " + "x" * 8000},
                        {"authorization": "Basic Zm9vOmJhcg=="},
                        {"x-livefeed-signature": "sha256=" + "0" * 64},
                        {"x-livefeed-signature": "sha256=²".encode()},
                        {"x-livefeed-signature": "v1=" + "0" * 64,
                         "x-livefeed-timestamp": "1" * 5000},
                        {"x-livefeed-signature": "v1=²".encode(),
                         "x-livefeed-timestamp": "²".encode()}):
            r = await http.post("/v1/events", content=body(ev()), headers=headers)
            TALLY.record(CLS, r.status_code)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=300),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                                  | st.text(max_size=20),
                                  lambda kids: st.lists(kids, max_size=4)
                                  | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                                  max_leaves=20).map(
                         lambda v: json.dumps(v, allow_nan=True).encode())))
async def test_generated_bodies_never_5xx(target: Target, raw: bytes) -> None:
    async with httpx.AsyncClient(base_url=target.base, timeout=30) as http:
        r = await http.post("/v1/events", content=raw, headers={
            **auth_headers(target.admin()), "content-type": "application/json"})
    TALLY.record(CLS + " (generated)", r.status_code)
    assert r.status_code in (400, 413, 422), r.text[:300]

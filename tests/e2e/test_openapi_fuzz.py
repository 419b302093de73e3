"""A bounded schemathesis run against a real gateway process: requests generated from
`/openapi.json` (valid ones, and for operations with inputs invalid ones too), with a
valid admin token, must never get a 5xx, and every answer must be as the document says
(a documented status, media type and body schema)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from livefeed.core.settings import Settings
from tests.gateway.livehelp import SECRET, token
from tests.procs import running, start_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

EXAMPLES = 25  # per operation and mode: about 20 operations, 600 requests or so in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# A valid token opens an endless event stream here; its refusals are tested in
# tests/gateway/test_sse.py.
SKIPPED = {("GET", "/v1/sse")}


def fuzz(url: str, doc: dict[str, Any], headers: dict[str, str]) -> Counter[str]:
    """Run every operation of `doc` against the gateway at `url`; returns the requests made
    per operation and generation mode."""
    schema = schemathesis.openapi.from_dict(doc)
    ran: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        method, path = operation.method.upper(), operation.path
        if (method, path) in SKIPPED:
            continue
        declared = doc["paths"][path][method.lower()]
        run(operation, GenerationMode.POSITIVE, url, headers, ran)
        # Invalid input, where there is some (any string is a valid plain string): the
        # answer is a documented 4xx.
        constrained = [p for p in declared.get("parameters", [])
                       if p["schema"] != {"type": "string"}]
        if constrained or "requestBody" in declared:
            run(operation, GenerationMode.NEGATIVE, url, headers, ran)
    return ran


def run(operation: schemathesis.APIOperation, mode: GenerationMode, url: str,
        headers: dict[str, str], ran: Counter[str]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode, headers=headers))
    def one(case: schemathesis.Case) -> None:
        ran[f"{operation.label} {mode.value}"] += 1
        case.call_and_validate(base_url=url, checks=CHECKS, timeout=10)

    one()


async def test_the_gateway_answers_as_its_document_says(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    gw, url = await anyio.to_thread.run_sync(start_gateway, settings_factory(secret=SECRET),
                                             tmp_path)
    with running(gw):
        headers = {"Authorization": f"Bearer {token('fuzz', admin=True)}"}
        async with httpx.AsyncClient() as client:
            doc = (await client.get(f"{url}/openapi.json")).json()
        ran = await anyio.to_thread.run_sync(fuzz, url, doc, headers)
    documented = {f"{method.upper()} {path}" for path, methods in doc["paths"].items()
                  for method in methods}
    assert {label.rsplit(" ", 1)[0] for label in ran} == documented - {
        f"{m} {p}" for m, p in SKIPPED}
    # Operations with inputs get many different requests, good and bad (those without, a
    # few good ones).
    for label in ("POST /v1/events", "GET /admin/api/pending", "GET /v1/feed"):
        assert ran[f"{label} positive"] >= EXAMPLES and ran[f"{label} negative"] >= EXAMPLES

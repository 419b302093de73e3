"""A bounded schemathesis run against a real gateway process: requests generated from
`/openapi.json`, with a valid admin token, must never get a 5xx, and every answer must be
as the document says (a documented status, media type and body schema)."""

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

EXAMPLES = 25  # per operation: about 20 operations, a few hundred requests in all
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# A valid token opens an endless event stream here; its refusals are tested in
# tests/gateway/test_sse.py.
SKIPPED = {("GET", "/v1/sse")}


def fuzz(url: str, doc: dict[str, Any], headers: dict[str, str]) -> Counter[str]:
    """Run every operation of `doc` against the gateway at `url`; returns the requests made
    per operation."""
    schema = schemathesis.openapi.from_dict(doc)
    ran: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(headers=headers))
        def run(case: schemathesis.Case) -> None:
            ran[case.operation.label] += 1
            case.call_and_validate(base_url=url, checks=CHECKS, timeout=10)

        run()
    return ran


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
    assert set(ran) == documented - {f"{m} {p}" for m, p in SKIPPED}
    # Operations with inputs get many different requests (those without, a few).
    assert ran["POST /v1/events"] >= EXAMPLES and ran["GET /admin/api/pending"] >= EXAMPLES

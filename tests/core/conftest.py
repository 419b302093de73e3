"""Fixtures of the core tests: a client on either Redis version."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from livefeed.core import redis_client
from livefeed.core.keys import Keys


@pytest.fixture
def any_redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The shared Redis 7, or the embedded Redis 6.2 (no `lag` in XINFO GROUPS)."""
    if getattr(request, "param", "redis7") == "redis7":
        return redis_url
    url: str = request.getfixturevalue("redis62_url")
    return url


@pytest.fixture
async def r(any_redis_url: str, keys: Keys) -> AsyncIterator[Any]:
    """A client on either Redis; every key of the test's prefix is deleted afterwards."""
    client = redis_client.connect(any_redis_url)
    try:
        yield client
    finally:
        await redis_client.delete_keys(client, keys)
        await client.aclose()

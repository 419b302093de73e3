"""Readiness checks of a dependency, as gateways and consumers report them: "ok", or why not
(its error, or no answer within the bound), never raising."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from livefeed.core.errors import DB_ERRORS, REDIS_ERRORS

CHECK_TIMEOUT_S = 1.0


async def probe(check: Callable[[], Awaitable[object]], errors: tuple[type[BaseException], ...],
                timeout_s: float = CHECK_TIMEOUT_S) -> str:
    try:
        with anyio.fail_after(timeout_s):
            await check()
    except TimeoutError:
        return f"no answer within {timeout_s}s"
    except errors as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


async def redis_ok(redis: Any) -> str:
    """PING on a Redis client (standalone or cluster)."""
    return await probe(redis.ping, REDIS_ERRORS)


async def postgres_ok(query: Callable[[], Awaitable[object]]) -> str:
    """`query` (a `SELECT 1` on a pool or a fresh connection) answers."""
    return await probe(query, DB_ERRORS)

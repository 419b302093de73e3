"""Resolve settings into running servers: the given URLs, or the embedded default.

`livefeed up` records the URLs of the embedded servers it started in
`<data dir>/runtime.json`, so other commands run beside it (`status`, `send`, `token`)
reach the same servers without any setting.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec

from livefeed.core import redis_client
from livefeed.core.embedded import EmbeddedPostgres, EmbeddedRedis
from livefeed.core.keys import Keys
from livefeed.core.settings import Resolved, Settings, env_name

logger = logging.getLogger(__name__)


class Runtime(msgspec.Struct):
    redis_url: str
    database_url: str
    gateway_url: str | None = None
    pid: int | None = None
    redis_cluster: bool = False


def runtime_path(settings: Settings) -> Path:
    return settings.data_path / "runtime.json"


def read_runtime(settings: Settings) -> Runtime | None:
    """The URLs a live `livefeed up` wrote, or None if there is none (or it is gone)."""
    try:
        rt = msgspec.json.decode(runtime_path(settings).read_bytes(), type=Runtime)
    except (FileNotFoundError, msgspec.DecodeError):
        return None
    if rt.pid is not None:
        try:
            os.kill(rt.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return rt


def write_runtime(settings: Settings, rt: Runtime) -> None:
    path = runtime_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(rt)))
    os.replace(tmp, path)


def clear_runtime(settings: Settings) -> None:
    with contextlib.suppress(FileNotFoundError):
        runtime_path(settings).unlink()


def attach(settings: Settings) -> Resolved:
    """Fill unset URLs from a running `livefeed up`, or explain how to get servers."""
    if settings.redis_url and settings.database_url:
        return settings.resolve()
    rt = read_runtime(settings)
    if rt is None:
        missing = [env_name(n) for n in ("redis_url", "database_url") if not getattr(settings, n)]
        raise SystemExit(
            f"livefeed: {' and '.join(missing)} not set and no `livefeed up` is running in "
            f"{settings.data_path}; set them or start `livefeed up` first"
        )
    cluster = settings.redis_cluster if settings.redis_url else rt.redis_cluster
    return msgspec.structs.replace(settings, redis_cluster=cluster).resolve(
        redis_url=rt.redis_url, database_url=rt.database_url)


@contextlib.contextmanager
def embedded_servers(settings: Settings) -> Iterator[Resolved]:
    """Start embedded Redis/PostgreSQL for the URLs that are unset; yield resolved settings."""
    with contextlib.ExitStack() as stack:
        redis_url, database_url = settings.redis_url, settings.database_url
        if redis_url is None:
            redis = stack.enter_context(EmbeddedRedis(settings.data_path / "redis"))
            redis_url = redis.url
            logger.info("started embedded Redis at %s", redis_url)
        if database_url is None:
            pg = stack.enter_context(EmbeddedPostgres(settings.data_path / "postgres"))
            database_url = pg.url
            logger.info("started embedded PostgreSQL at %s", database_url)
        yield settings.resolve(redis_url=redis_url, database_url=database_url)


async def preflight(settings: Resolved, *, database: bool = True) -> None:
    """Fail with one line naming the setting and the fix when a server does not answer.
    `database=False`: only Redis must answer now (a consumer waits for PostgreSQL)."""
    from livefeed.core.errors import REDIS_ERRORS
    from livefeed.core.settings import SettingsError, _hide_password

    try:
        await redis_client.ping(settings.redis_url, cluster=settings.redis_cluster)
    except REDIS_ERRORS as exc:
        raise SettingsError(
            f"{env_name('redis_url')}={_hide_password(settings.redis_url)}: Redis does not "
            f"answer ({exc}); start Redis there, fix the URL, or unset it to use the "
            "embedded Redis"
        ) from None
    if database and (problem := await database_problem(settings)):
        raise SettingsError(f"{problem}; start it there, fix the URL, or unset it to use the "
                            "embedded PostgreSQL")


async def database_problem(settings: Resolved) -> str | None:
    """None if PostgreSQL answers, else one line naming the setting and the failure."""
    import asyncpg

    from livefeed.core.errors import DB_ERRORS
    from livefeed.core.settings import _hide_password

    try:
        conn = await asyncpg.connect(settings.database_url, timeout=5)
    except DB_ERRORS as exc:
        return (f"{env_name('database_url')}={_hide_password(settings.database_url)}: "
                f"PostgreSQL does not answer ({exc})")
    await conn.close()
    return None


@contextlib.asynccontextmanager
async def connect_redis(settings: Settings) -> AsyncIterator[tuple[Any, Keys]]:
    """A Redis client and the keys of `settings` for an operator command (`status`,
    `pending`, `claim`, `dead`), after `attach` and `preflight`; closed on exit."""

    resolved = attach(settings)
    await preflight(resolved)
    client = redis_client.connect(resolved.redis_url, cluster=resolved.redis_cluster)
    try:
        yield client, Keys(resolved.prefix, partitions=resolved.partitions)
    finally:
        await client.aclose()

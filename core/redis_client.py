"""Redis client factories: standalone or cluster, normal or for blocking reads.

redis-py 8 gives every command a 5 s socket timeout by default, so an
`XREADGROUP ... BLOCK` longer than that fails with TimeoutError; blocking readers get
their own client with no socket timeout (and a blocked read holds its pool connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, cast, overload
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from livefeed.core.keys import Keys

# What core and the consumers take: either client; both speak the commands they use.
RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"

# Stream entry fields as our clients read them (bytes: `decode_responses` is off).
Fields: TypeAlias = dict[bytes, bytes]

COMMAND_TIMEOUT_S = 5.0
POOL_SIZE = 100
HEALTH_CHECK_S = 5


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a cluster URL: `redis://h1:p1,h2:p2` lists several
    startup nodes, so a client can start while one of them is down."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for part in netloc.split(","):
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            host, port = part, ""  # no port given (or an IPv6 address without one)
        nodes.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return nodes


def node_options(*, blocking: bool = False) -> dict[str, Any]:
    """Options of a plain client to one node (see `connect`)."""
    return {
        "socket_timeout": None if blocking else COMMAND_TIMEOUT_S,
        "socket_connect_timeout": COMMAND_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_S,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
    }


@overload
def connect(url: str, *, cluster: Literal[False] = ..., blocking: bool = ...,
            max_connections: int | None = ..., decode_responses: bool = ...) -> aioredis.Redis:
    ...


@overload
def connect(url: str, *, cluster: bool, blocking: bool = ...,
            max_connections: int | None = ..., decode_responses: bool = ...) -> RedisClient:
    ...


def connect(
    url: str,
    *,
    cluster: bool = False,
    blocking: bool = False,
    max_connections: int | None = None,
    decode_responses: bool = False,
) -> RedisClient:
    """A client for `url`. `blocking=True` disables the socket timeout for BLOCK reads.

    Returns `redis.asyncio.Redis` (or `RedisCluster` with `cluster=True`); bytes replies
    unless `decode_responses`. Connections are opened lazily, on first command.
    """
    options = node_options(blocking=blocking)
    options["decode_responses"] = decode_responses
    if cluster:
        nodes = cluster_nodes(url)
        if len(nodes) == 1:
            return RedisCluster.from_url(url, **options)
        parts = urlsplit(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes],
                            username=parts.username or None, password=parts.password or None,
                            ssl=parts.scheme == "rediss", **options)
    # A burst (thousands of clients connecting at once, each reading its feed's end) waits
    # for a free connection instead of failing: redis-py's default pool raises
    # MaxConnectionsError past 100, which a gateway answered as HTTP 500.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections or POOL_SIZE, timeout=COMMAND_TIMEOUT_S,
        **options)
    return aioredis.Redis.from_pool(pool)


async def ping(url: str, *, cluster: bool = False) -> None:
    """Raise redis.ConnectionError (or TimeoutError) if `url` does not answer PING; for a
    cluster, if none of the URL's nodes does (a node down while its replica takes over is
    the clients' business, not a reason for a role to refuse to start)."""
    if not cluster:
        client = connect(url)
        try:
            await client.ping()
        finally:
            await client.aclose()
        return
    parts = urlsplit(url)
    failure: Exception | None = None
    for host, port in cluster_nodes(url):
        node = aioredis.Redis(host=host, port=port, username=parts.username or None,
                              password=parts.password or None, ssl=parts.scheme == "rediss",
                              socket_connect_timeout=COMMAND_TIMEOUT_S,
                              socket_timeout=COMMAND_TIMEOUT_S)
        try:
            await node.ping()
            return
        except (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError) as exc:
            failure = exc
        finally:
            await node.aclose()
    assert failure is not None
    raise failure


async def delete_keys(client: RedisClient, keys: Keys) -> int:
    """Delete every key of `keys`' prefix (a throwaway namespace: tests, compare, bench)."""
    deleted = 0
    for pattern in keys.patterns():
        batch = [k async for k in client.scan_iter(match=pattern, count=1000)]
        for i in range(0, len(batch), 500):
            deleted += await client.delete(*batch[i : i + 500])
    return deleted


def stream_rows(reply: Sequence[tuple[Any, Any]] | None) -> list[tuple[str, Fields]]:
    """An XRANGE/XREVRANGE reply as (id, fields) pairs.

    redis-py types stream replies for both reply modes (str or bytes, nil ids and fields);
    XRANGE on a client with `decode_responses` off answers bytes ids and fields.
    """
    return [(_s(sid), cast(Fields, fields or {})) for sid, fields in reply or ()]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

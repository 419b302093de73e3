"""livefeed's own exceptions, and the third-party ones that mean "a server is away".

Two kinds of tuple: `*_UNAVAILABLE` are failures that say nothing about the request or
the entries (connection refused, reset, timed out, server starting or shutting down), so
the same work may simply be retried later; `*_ERRORS` are any failure of a call to that
server, for probes and for answers that only say "not now" (503).
"""

from __future__ import annotations

import asyncpg
import redis.exceptions


class LivefeedError(Exception):
    """The root of livefeed's own exceptions."""


class RetryBatch(LivefeedError):
    """Raised by a group handler: nothing is wrong with the entries, retry the whole batch
    later. The runner retries it in process, so it burns no delivery count."""


# `TimeoutError` is an `OSError` (and asyncio's since 3.11); named for the reader.
REDIS_UNAVAILABLE = (
    OSError,
    TimeoutError,
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (Redis loading its data)
    redis.exceptions.TimeoutError,
    redis.exceptions.TryAgainError,  # cluster: a slot is migrating
    redis.exceptions.ClusterDownError,  # cluster: a shard has no primary (failover)
    # cluster: no node reachable, or the slot map could not be built; not a RedisError
    redis.exceptions.RedisClusterException,
)
REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError,
                TimeoutError)

DB_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.OperatorInterventionError,  # admin shutdown, query cancelled
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock: try again
)
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

"""One root for livefeed's exceptions; one definition of "a server is away"."""

from __future__ import annotations

import asyncpg
import redis.exceptions

from livefeed.core import errors, probe
from livefeed.core.auth import InvalidToken
from livefeed.core.pending import PendingError
from livefeed.core.settings import SettingsError
from livefeed.gateway import ingest, metrics


def test_own_exceptions_share_one_root_and_keep_their_builtin_base() -> None:
    for exc in (SettingsError, InvalidToken, PendingError, errors.RetryBatch):
        assert issubclass(exc, errors.LivefeedError), exc
    assert issubclass(SettingsError, ValueError) and issubclass(PendingError, ValueError)


def test_unavailable_covers_what_a_retry_can_fix() -> None:
    for exc in (asyncpg.SerializationError, asyncpg.DeadlockDetectedError,
                asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
                asyncpg.AdminShutdownError, asyncpg.TooManyConnectionsError,
                ConnectionResetError, TimeoutError):
        assert issubclass(exc, errors.DB_UNAVAILABLE), exc
    for exc in (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError,
                redis.exceptions.TimeoutError, redis.exceptions.TryAgainError,
                ConnectionRefusedError):
        assert issubclass(exc, errors.REDIS_UNAVAILABLE), exc
    # A refused row or a failing command is about the data: retrying cannot fix it.
    assert not issubclass(asyncpg.DataError, errors.DB_UNAVAILABLE)
    assert not issubclass(redis.exceptions.ResponseError, errors.REDIS_UNAVAILABLE)


def test_callers_use_the_shared_tuples() -> None:
    assert ingest.DB_UNAVAILABLE is errors.DB_UNAVAILABLE
    assert ingest.REDIS_ERRORS is metrics.REDIS_ERRORS is probe.REDIS_ERRORS is errors.REDIS_ERRORS
    assert probe.DB_ERRORS is errors.DB_ERRORS  # the readiness checks of gateways and consumers

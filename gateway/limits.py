"""What one client can hold: live connections per user (over all gateways), per gateway
process, and new connections per second per gateway process.

The WebSocket and SSE handlers wrap a session in `connection(state, user, transport)`
once they know the user; a refusal raises `Limited` before the session sends anything:
the WebSocket is accepted and closed with 4029 and the reason, SSE answers 429 with
`Retry-After`. The per-user count is the user's presence (gateway/presence.py),
checked and taken by one script. For a WebSocket that script runs while the handshake
completes, the session subscribes and reads its replay's first page (its round trip was a
fifth of a reconnect): the session awaits `admitted()` before it sends anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from livefeed.core import metrics
from livefeed.core.errors import LivefeedError
from livefeed.gateway.feature import Feature
from livefeed.gateway.presence import FEATURE as PRESENCE
from livefeed.gateway.presence import Presence
from livefeed.gateway.state import GatewayState

Transport = Literal["ws", "sse"]
# Retry-After of a refusal by count: connections end slower than tokens come back.
COUNT_RETRY_S = 5


class Limited(LivefeedError):
    """A new live connection is refused (close 4029, HTTP 429)."""

    def __init__(self, reason: str, retry_after_s: int, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.kind = kind  # the `reason` label of livefeed_connections_refused


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Limits:
    """The limits of one gateway process."""

    def __init__(self, presence: Presence, *, max_connections: int, max_user_connections: int,
                 connect_rate: float) -> None:
        self.presence = presence
        self.max_connections = max_connections
        self.max_user_connections = max_user_connections
        # A second's worth of connections at once (a gateway that just started).
        self.bucket = TokenBucket(connect_rate, max(1.0, connect_rate))
        self.active = 0

    def connection(self, user: str, transport: Transport) -> _Held:
        return _Held(self, user, late=transport == "ws")


class _Held:
    """One live connection of `user` held for the block; `Limited` on entry, or with
    `late` from `admitted()` (the user's count is then taken while the block starts). A
    slotted class rather than an async generator: it lives as long as the connection, and
    the generator's frame and contextlib's wrapper cost about 1 KiB more per connection."""

    __slots__ = ("limits", "user", "member", "_join")

    def __init__(self, limits: Limits, user: str, *, late: bool = False) -> None:
        self.limits = limits
        self.user = user
        self.member: str | None = None
        # The presence join while it runs (`late`); dropped once awaited.
        self._join: asyncio.Task[str | None] | None = None if not late else _NOT_STARTED

    async def __aenter__(self) -> _Held:
        lim = self.limits
        wait = lim.bucket.take()
        if wait:
            raise _refused(f"too many new connections on this gateway: retry in {wait:.1f} s",
                           math.ceil(wait), "rate")
        if lim.active >= lim.max_connections:
            raise _refused(f"this gateway holds its limit of {lim.max_connections} "
                           "connections", COUNT_RETRY_S, "gateway_limit")
        lim.active += 1
        if self._join is _NOT_STARTED:
            self._join = asyncio.ensure_future(
                lim.presence.join(self.user, lim.max_user_connections))
            return self
        try:
            await self.admitted()
        except BaseException:
            lim.active -= 1
            raise
        return self

    async def admitted(self) -> None:
        """Return once the user's count admits this connection; `Limited` if it does not
        (with `late`, the block then ends as for any error)."""
        join, self._join = self._join, None
        if join is not None:
            self.member = await join
        elif self.member is None:
            lim = self.limits
            self.member = await lim.presence.join(self.user, lim.max_user_connections)
        if self.member is None:
            lim = self.limits
            raise _refused(f"this user holds its limit of {lim.max_user_connections} "
                           "connections", COUNT_RETRY_S, "user_limit")

    async def __aexit__(self, *exc: object) -> None:
        try:
            join, self._join = self._join, None
            if join is not None:
                # Never awaited (the block ended first): its entry is left, or ages out.
                if not join.done():
                    join.cancel()
                await asyncio.wait((join,))
                if not join.cancelled() and join.exception() is None:
                    self.member = join.result()
            if self.member is not None:
                await self.limits.presence.leave(self.user, self.member)
        finally:
            self.limits.active -= 1


# A late join's placeholder until the block starts it.
_NOT_STARTED: Any = object()


def _refused(reason: str, retry_after_s: int, kind: str) -> Limited:
    metrics.CONNECTIONS_REFUSED.labels(kind).inc()
    return Limited(reason, max(1, retry_after_s), kind)


def connection(state: GatewayState, user: str, transport: Transport) -> _Held:
    """Hold one live connection of `user` for the block; raises `Limited` on entry."""
    if state.limits is None:
        raise RuntimeError("live delivery needs the limits feature (gateway.limits.FEATURE)")
    return state.limits.connection(user, transport)


@contextlib.asynccontextmanager
async def lifespan(state: GatewayState) -> AsyncIterator[None]:
    if state.presence is None:
        raise RuntimeError("the limits feature needs presence (gateway.presence.FEATURE)")
    s = state.settings
    state.limits = Limits(state.presence, max_connections=s.max_connections,
                          max_user_connections=s.max_user_connections,
                          connect_rate=s.connect_rate)
    yield


FEATURE = Feature("limits", lifespan=lifespan, needs=(PRESENCE,))

"""Who is connected where: every live connection (WebSocket or SSE) of a user, over all
gateways, in Redis, and `GET /v1/presence?user=..` for admin tokens.

A user's connections are the members of one sorted set, `lf:{p}:presence:<user>` (in the
user's partition, so it works on a cluster), `<gateway id>:<serial>` scored by the time
(ms) the entry expires. A gateway renews its own entries every third of
`LIVEFEED_PRESENCE_TTL` and removes each when its connection ends; the entries of a
gateway that crashed stop being renewed and age out within the TTL. A new connection is
added by a script that first drops expired entries and refuses it when the user already
holds `limit` live ones (`gateway/limits.py`), so the count is checked and taken at once
over all gateways.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from redis.exceptions import NoScriptError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from livefeed.core import auth
from livefeed.core.errors import REDIS_ERRORS
from livefeed.core.keys import Keys
from livefeed.gateway.bearer import authenticate
from livefeed.gateway.feature import Feature
from livefeed.gateway.operation import ADMIN, Answer, Operation, Param
from livefeed.gateway.state import GatewayState
from livefeed.schemas.event import valid_user_id
from livefeed.schemas.http import ErrorBody
from livefeed.schemas.presence import PresenceView

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0
RENEW_BATCH = 500  # users per renewal pipeline

# KEYS[1] presence set; ARGV now_ms, ttl_ms, limit (0: none), member.
# -> the user's live connections including this one, or -1 (refused: at the limit).
_JOIN = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[3])
if limit > 0 and n >= limit and not redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  return -1
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""
_JOIN_SHA = hashlib.sha1(_JOIN.encode()).hexdigest()


def gateway_id() -> str:
    """This process's name in presence entries: `<host>-<pid>-<6 hex digits>`."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def now_ms() -> int:
    return int(time.time() * 1000)


class Presence:
    """This gateway's live connections, mirrored into Redis (one entry per connection)."""

    def __init__(self, redis: Any, keys: Keys, ttl_s: float, name: str | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.name = name or gateway_id()
        self._serial = itertools.count(1)
        # user -> members of this gateway's connections
        self.local: dict[str, set[str]] = {}
        self._renewing = False
        self._left_meanwhile: list[tuple[str, str]] = []

    async def join(self, user: str, limit: int) -> str | None:
        """Register a new connection of `user`: its member name, or None when the user
        already holds `limit` live connections over all gateways. When Redis does not
        answer, the connection is admitted and entered by the next renewal."""
        member = f"{self.name}:{next(self._serial)}"
        # Entered locally (so renewed) only once admitted: a renewal running meanwhile
        # must not write the entry of a connection the script refuses. A join cancelled
        # midway leaves at most an entry that is never renewed and ages out.
        try:
            with anyio.fail_after(REDIS_TIMEOUT_S):
                count = await self._join_script(user, limit, member)
        except REDIS_ERRORS as exc:
            logger.warning("presence: cannot register a connection of %r: %r", user, exc)
            count = 0
        if count < 0:
            return None
        self.local.setdefault(user, set()).add(member)
        return member

    async def _join_script(self, user: str, limit: int, member: str) -> int:
        args = (self.keys.presence(user), now_ms(), self.ttl_ms, limit, member)
        try:
            return int(await self.redis.evalsha(_JOIN_SHA, 1, *args))
        except NoScriptError:
            await self.redis.script_load(_JOIN)
            return int(await self.redis.evalsha(_JOIN_SHA, 1, *args))

    async def leave(self, user: str, member: str) -> None:
        """The connection ended: remove its entry (it ages out if Redis does not answer)."""
        self._forget(user, member)
        if self._renewing:
            self._left_meanwhile.append((user, member))
        with anyio.CancelScope(shield=True), contextlib.suppress(*REDIS_ERRORS):
            with anyio.move_on_after(REDIS_TIMEOUT_S):
                await self.redis.zrem(self.keys.presence(user), member)

    def _forget(self, user: str, member: str) -> None:
        members = self.local.get(user)
        if members is not None:
            members.discard(member)
            if not members:
                del self.local[user]

    async def renew(self) -> None:
        """Push back the expiry of every entry of this gateway (and re-enter those Redis
        lost or never got)."""
        snapshot = [(user, list(members)) for user, members in self.local.items()]
        self._renewing = True
        try:
            for lo in range(0, len(snapshot), RENEW_BATCH):
                expires = now_ms() + self.ttl_ms
                pipe = self.redis.pipeline(transaction=False)
                for user, members in snapshot[lo : lo + RENEW_BATCH]:
                    key = self.keys.presence(user)
                    pipe.zadd(key, dict.fromkeys(members, expires))
                    pipe.pexpire(key, self.ttl_ms)
                await pipe.execute()
        finally:
            self._renewing = False
            gone, self._left_meanwhile = self._left_meanwhile, []
        if gone:  # ended while being renewed: the renewal may have entered them again
            pipe = self.redis.pipeline(transaction=False)
            for user, member in gone:
                pipe.zrem(self.keys.presence(user), member)
            await pipe.execute()

    async def run(self) -> None:
        """Renew every third of the TTL until cancelled."""
        while True:
            await anyio.sleep(self.ttl_ms / 3000)
            try:
                with anyio.fail_after(self.ttl_ms / 3000):
                    await self.renew()
            except (*REDIS_ERRORS, TimeoutError) as exc:
                logger.warning("presence: renewal failed: %r", exc)

    async def clear(self) -> None:
        """Remove every entry of this gateway (on shutdown)."""
        pipe = self.redis.pipeline(transaction=False)
        for user, members in self.local.items():
            pipe.zrem(self.keys.presence(user), *members)
        self.local.clear()
        with contextlib.suppress(*REDIS_ERRORS), anyio.move_on_after(REDIS_TIMEOUT_S):
            await pipe.execute()

    async def of(self, user: str) -> PresenceView:
        """The user's live connections over all gateways."""
        raw = await self.redis.zrangebyscore(self.keys.presence(user), now_ms(), "+inf")
        names = [m.decode() if isinstance(m, bytes) else str(m) for m in raw]
        gateways = sorted({name.rpartition(":")[0] for name in names})
        return PresenceView(user=user, connections=len(names), gateways=gateways)


@contextlib.asynccontextmanager
async def lifespan(state: GatewayState) -> AsyncIterator[None]:
    presence = Presence(state.redis, state.keys, state.settings.presence_ttl_s)
    state.presence = presence
    async with anyio.create_task_group() as tg:
        tg.start_soon(presence.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await presence.clear()


_json = msgspec.json.Encoder()


def _answer(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json",
                    headers=headers)


async def presence_endpoint(request: Request) -> Response:
    state: GatewayState = request.app.state.lf
    try:
        claims = authenticate(request)  # the Authorization header only; `?token=` refused
    except auth.InvalidToken as exc:
        return _answer(401, {"error": f"admin token required: {exc}"},
                       {"www-authenticate": "Bearer"})
    if not claims.admin:
        return _answer(403, {"error": "this token is not an admin token"})
    user = request.query_params.get("user", "")
    if not valid_user_id(user):
        return _answer(400, {"error": "`user` must be a user id"})
    if state.presence is None:
        raise RuntimeError("presence needs its feature (gateway.presence.FEATURE)")
    try:
        with anyio.fail_after(REDIS_TIMEOUT_S):
            view = await state.presence.of(user)
    except (*REDIS_ERRORS, TimeoutError):
        return _answer(503, {"error": "Redis unavailable"}, {"retry-after": "1"})
    return _answer(200, view)


def routes() -> list[BaseRoute]:
    return [Route("/v1/presence", presence_endpoint)]


OPERATIONS = (
    Operation(
        "GET", "/v1/presence", "getPresence", "How many live connections a user has",
        "live",
        description="Counted over every gateway (each renews its own entries; a crashed "
        "gateway's stop counting within LIVEFEED_PRESENCE_TTL), so a webhook sender can "
        "decide \"offline: send an email instead\".",
        params=(Param("user", "query", "the user id", str, required=True),),
        security=ADMIN,
        responses={
            200: Answer("The user's live connections and the gateways holding them",
                        PresenceView),
            400: Answer("`user` is not a user id", ErrorBody),
            401: Answer("A missing, bad or expired token (or one in the URL)", ErrorBody),
            403: Answer("Not an admin token", ErrorBody),
            503: Answer("Redis does not answer: retry", ErrorBody),
        }),
)

FEATURE = Feature("presence", routes, lifespan, operations=OPERATIONS)

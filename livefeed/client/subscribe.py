"""Subscribing to one user's feed: every event once, in order, across any reconnect.

The gateway replays what followed the last id a client saw; this iterator remembers that
id, reconnects after a drop, a `4008` (too slow) or a `1012` (gateway draining) with
full-jitter backoff, and drops any frame at or below it, so a caller never sees an event
twice. When the history cannot be replayed (trimmed, or Redis lost it) it yields a
`Reset`: the caller reloads from `GET /v1/feed` and carries on.

The token goes in the `Authorization` header of the WebSocket handshake or SSE request,
never in the URL. When it expires on an open connection (close `4003`, or the SSE
`expired` frame) the iterator gets a fresh one from `get_token` and resumes at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

import anyio
import httpx
import msgspec
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from livefeed.client.backoff import Backoff

logger = logging.getLogger(__name__)

BAD_TOKEN = 4001  # the gateway's close code for a bad or missing token
TOKEN_EXPIRED = 4003  # the token expired on an open connection: get a new one, resume
LIMITED = 4029  # a connection limit: wait seconds (SSE: 429 with Retry-After), then resume
LIMITED_WAIT_S = 5.0


class _Limited(Exception):
    """A connection limit refused us (close 4029, SSE 429): wait `after` seconds."""

    def __init__(self, after: float) -> None:
        super().__init__(f"connection limit: retry after {after:g} s")
        self.after = after


class SubscribeError(Exception):
    """The gateway refuses this subscription (bad token and no way to get a new one)."""


@dataclass(frozen=True, slots=True)
class Event:
    id: str  # the feed id: what a later subscribe(last_id=...) resumes after
    data: dict[str, object]


@dataclass(frozen=True, slots=True)
class Reset:
    reason: str  # trimmed | unknown_id | stream_lost
    last_id: str | None  # where live delivery continues; the next resume point


class _Frame(msgspec.Struct):
    type: str
    id: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")
    reason: str | None = None
    last_id: str | None = None


_decode = msgspec.json.Decoder(_Frame).decode
_decode_data = msgspec.json.Decoder(dict[str, object]).decode


def _key(feed_id: str) -> tuple[int, int]:
    ms, _, seq = feed_id.partition("-")
    return int(ms), int(seq or 0)


class _Cursor:
    """The last id handed to the caller; frames at or below it are duplicates."""

    __slots__ = ("last_id", "_key")

    def __init__(self, last_id: str | None) -> None:
        self.last_id = last_id
        self._key = _key(last_id) if last_id else None

    def take(self, frame: _Frame) -> Event | Reset | None:
        if frame.type == "event" and frame.id is not None:
            key = _key(frame.id)
            if self._key is not None and key <= self._key:
                return None
            self.last_id, self._key = frame.id, key
            return Event(frame.id, _decode_data(frame.data))
        if frame.type == "reset":
            self.last_id = frame.last_id
            self._key = _key(frame.last_id) if frame.last_id else None
            return Reset(frame.reason or "unknown", frame.last_id)
        if frame.type in ("hello", "recovered") and frame.last_id and self._key is None:
            # A first connection without last_id: where a reconnect resumes.
            self.last_id, self._key = frame.last_id, _key(frame.last_id)
        return None


TokenSource = Callable[[], Awaitable[str]]


async def subscribe(url: str, token: str | None = None, *, last_id: str | None = None,
                    transport: Literal["ws", "sse"] = "ws",
                    get_token: TokenSource | None = None,
                    backoff: Backoff | None = None) -> AsyncIterator[Event | Reset]:
    """Events of the token's user from the gateway at `url` (base URL, http or https).

    `get_token` (optional) is awaited for a token before every (re)connect, so tokens may
    be short-lived; without it `token` is used throughout. Runs until the caller stops
    iterating; raises SubscribeError when the gateway refuses the token.
    """
    if token is None and get_token is None:
        raise ValueError("give token or get_token")
    cursor = _Cursor(last_id)
    backoff = backoff or Backoff(0.1, 10.0)
    refused = 0
    while True:
        current = await get_token() if get_token is not None else token
        assert current is not None
        try:
            stream = _ws(url, current, cursor) if transport == "ws" else _sse(url, current,
                                                                              cursor)
            async for item in stream:
                backoff.reset()
                refused = 0
                yield item
        except _Expired:
            if get_token is None:
                raise SubscribeError("the token expired and there is no get_token to "
                                     "renew it") from None
            logger.info("livefeed token expired; renewing, resuming after %s",
                        cursor.last_id)
            continue  # at once: nothing is wrong with the gateway
        except _Limited as exc:
            # Seconds, not the backoff's first milliseconds: the limit holds for a while.
            wait = max(exc.after, backoff.next())
            logger.info("livefeed connection refused by a limit; retrying in %.1f s", wait)
            await anyio.sleep(wait * (0.5 + random.random() / 2))  # equal jitter
            continue
        except _Refused as exc:
            refused += 1
            if get_token is None or refused > 2:
                raise SubscribeError(str(exc)) from None
        except (OSError, ConnectionClosed, InvalidHandshake, httpx.TransportError,
                httpx.HTTPStatusError, TimeoutError) as exc:
            logger.info("livefeed subscription dropped (%r); resuming after %s", exc,
                        cursor.last_id)
        await anyio.sleep(backoff.next())


class _Refused(Exception):
    pass


class _Expired(Exception):
    pass


def _query(cursor: _Cursor) -> str:
    return "?" + urlencode({"last_id": cursor.last_id}) if cursor.last_id else ""


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _ws(url: str, token: str, cursor: _Cursor) -> AsyncIterator[Event | Reset]:
    base = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    try:
        async with connect(f"{base}/v1/ws{_query(cursor)}", max_size=None,
                           compression=None, additional_headers=_auth(token)) as ws:
            async for message in ws:
                text = message if isinstance(message, str) else message.decode()
                # Several frames in one message, one per line (the gateway coalesces).
                for frame in text.split("\n"):
                    item = cursor.take(_decode(frame)) if frame else None
                    if item is not None:
                        yield item
    except ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code == BAD_TOKEN:
            raise _Refused(f"gateway closed with {BAD_TOKEN}: {exc.rcvd.reason}") from None
        if exc.rcvd is not None and exc.rcvd.code == TOKEN_EXPIRED:
            raise _Expired from None
        if exc.rcvd is not None and exc.rcvd.code == LIMITED:
            raise _Limited(LIMITED_WAIT_S) from None
        raise
    except InvalidStatus as exc:
        if exc.response.status_code in (401, 403):
            raise _Refused(f"gateway answered {exc.response.status_code}") from None
        raise
    # A clean close (1000, 1012, 4008): the caller's loop reconnects and resumes.


async def _sse(url: str, token: str, cursor: _Cursor) -> AsyncIterator[Event | Reset]:
    headers = _auth(token)
    if cursor.last_id:
        headers["last-event-id"] = cursor.last_id
    timeout = httpx.Timeout(10.0, read=None)
    async with httpx.AsyncClient(timeout=timeout) as client, aconnect_sse(
        client, "GET", f"{url.rstrip('/')}/v1/sse", headers=headers,
    ) as source:
        if source.response.status_code == 401:
            raise _Refused("gateway answered 401")
        if source.response.status_code == 429:
            raise _Limited(_retry_after(source.response.headers.get("retry-after")))
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            if not sse.data:
                continue
            if sse.event == "expired":
                raise _Expired
            item = cursor.take(_decode(sse.data))
            if item is not None:
                yield item


def _retry_after(value: str | None) -> float:
    """Seconds of a `Retry-After` header (a number; anything else: LIMITED_WAIT_S)."""
    try:
        return min(max(float(value or ""), 0.0), 300.0)
    except ValueError:
        return LIMITED_WAIT_S

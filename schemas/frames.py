"""Frames sent to browsers over WebSocket (JSON text) and SSE (same JSON in `data:`).

One WebSocket message carries one or more frames, one per line (`\n` between them; JSON
never holds a raw newline): a session coalesces what it has ready to send (a replay page,
a burst) up to `LIVEFEED_COALESCE` frames per message. `split_message` reads one.

Event frames are built from the stored event JSON without decoding it (`msgspec.Raw`):
the feed stream keeps the exact bytes ingest validated.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Literal

import msgspec

# How events reach the gateways (LIVEFEED_DELIVERY); `hello` tells the client which.
Delivery = Literal["streams", "pubsub", "list"]
FrameType = Literal["hello", "event", "recovered", "reset", "ping", "expired"]
# Why a client's history after its last id cannot be replayed (`reset.reason`).
ResumeProblem = Literal["trimmed", "unknown_id", "stream_lost"]


class CloseCode(IntEnum):
    """WebSocket close codes the gateway sends (the browser client repeats the numbers in
    gateway/static/livefeed.js; a test keeps both equal). SSE has no close code: a bad
    token or ticket is HTTP 401; an expired token's stream ends with an `expired` frame; a
    slow client's or a draining gateway's stream just ends."""

    BAD_TOKEN = 4001  # bad, missing or late token: do not retry with it (get a new one)
    TOKEN_EXPIRED = 4003  # the token expired on an open connection: new token, resume
    TOO_SLOW = 4008  # the client did not keep up: reconnect with last_id and replay
    DRAINING = 1012  # "service restart": the gateway is shutting down, reconnect
    LIMITED = 4029  # a connection limit or the connection rate: back off, retry later


class Hello(msgspec.Struct, frozen=True, tag="hello", tag_field="type", omit_defaults=True):
    user: str
    mode: Delivery
    # On a connection without last_id: the feed's current end, where a reconnect resumes
    # ("0-0", the start, for an empty feed).
    last_id: str | None = None


class EventFrame(msgspec.Struct, frozen=True, tag="event", tag_field="type"):
    id: str
    data: msgspec.Raw


class Recovered(msgspec.Struct, frozen=True, tag="recovered", tag_field="type"):
    count: int
    last_id: str | None


class Reset(msgspec.Struct, frozen=True, tag="reset", tag_field="type", omit_defaults=True):
    reason: ResumeProblem
    # Where live delivery continues from ("0-0": the feed is empty); the next last_id.
    last_id: str | None = None


class Ping(msgspec.Struct, frozen=True, tag="ping", tag_field="type"):
    """Server keepalive on an idle WebSocket (every LIVEFEED_KEEPALIVE seconds)."""


class Expired(msgspec.Struct, frozen=True, tag="expired", tag_field="type"):
    """The last frame of an SSE stream whose token expired: get a new ticket, resume."""


Frame = Hello | EventFrame | Recovered | Reset | Ping | Expired

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Frame)


# Messages a WebSocket client sends (JSON text).

class Auth(msgspec.Struct, frozen=True, tag="auth", tag_field="type"):
    """The first message of a connection without an Authorization header."""

    token: str


class Refresh(msgspec.Struct, frozen=True, tag="refresh", tag_field="type"):
    """A new token of the same user, pushing the connection's expiry back."""

    token: str


ClientMessage = Auth | Refresh
_client_decoder = msgspec.json.Decoder(ClientMessage)


def decode_client_message(raw: bytes | str) -> ClientMessage:
    """Raises msgspec.DecodeError (ValidationError included) for anything else."""
    return _client_decoder.decode(raw)


PING_FRAME = b'{"type":"ping"}'
EXPIRED_FRAME = b'{"type":"expired"}'


def encode_frame(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_frame(raw: bytes | str) -> Frame:
    return _decoder.decode(raw)


# The `event` frame as bytes around the feed id and the payload: built here, by the fanout
# script in Lua (core.eventlog) and recognised without decoding (gateway.live.frame_id).
EVENT_FRAME_HEAD = b'{"type":"event","id":"'
EVENT_FRAME_MID = b'","data":'
EVENT_FRAME_TAIL = b"}"


def event_frame(feed_id: str, data: bytes) -> bytes:
    """The `event` frame for one feed entry; byte-identical to what the fanout script publishes."""
    # One join, not four concatenations (each a copy): a replay builds one per event.
    return b"".join((EVENT_FRAME_HEAD, feed_id.encode(), EVENT_FRAME_MID, data, EVENT_FRAME_TAIL))


FRAME_SEPARATOR = b"\n"


def join_frames(frames: Sequence[bytes]) -> bytes:
    """One WebSocket message of several frames."""
    return FRAME_SEPARATOR.join(frames)


def split_message(message: str | bytes) -> list[bytes]:
    """The frames of one WebSocket message, in order."""
    data = message.encode() if isinstance(message, str) else message
    return [line for line in data.split(FRAME_SEPARATOR) if line]


# A server-to-client WebSocket text frame (RFC 6455 5.2): FIN + opcode 1, the payload
# length in 7, 7+16 or 7+64 bits, never masked (only clients mask). The gateway encodes a
# message once and writes the same bytes to every connection that gets it
# (gateway/ws.py). wsproto's FrameProtocol encodes text only from a str (one decode and
# one re-encode of JSON we hold as UTF-8 bytes) and copies the payload twice more.
_FIN_TEXT = 0x81
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def ws_text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked WebSocket text frame holding `payload` (UTF-8)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return _LEN16.pack(_FIN_TEXT, 126, n) + payload
    return _LEN64.pack(_FIN_TEXT, 127, n) + payload

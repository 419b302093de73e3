"""Frames sent to browsers over WebSocket (JSON text) and SSE (same JSON in `data:`).

Event frames are built from the stored event JSON without decoding it (`msgspec.Raw`):
the feed stream keeps the exact bytes ingest validated.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class Hello(msgspec.Struct, frozen=True, tag="hello", tag_field="type", omit_defaults=True):
    user: str
    mode: Literal["streams", "pubsub"]
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
    reason: Literal["trimmed", "unknown_id", "stream_lost"]
    # Where live delivery continues from ("0-0": the feed is empty); the next last_id.
    last_id: str | None = None


Frame = Hello | EventFrame | Recovered | Reset

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_frame(raw: bytes | str) -> Frame:
    return _decoder.decode(raw)


def event_frame(feed_id: str, data: bytes) -> bytes:
    """The `event` frame for one feed entry; byte-identical to what the fanout script publishes."""
    return b'{"type":"event","id":"' + feed_id.encode() + b'","data":' + data + b"}"

"""The `list` delivery mode's live message: the article's `new_newsletter` notification.

`{"type": "new_newsletter", "newsletter": <event>, "timestamp": <ms since the epoch>}` is
what ingest publishes on `user:<id>:newsletters` in `list` mode (the article's own shape).
Gateways turn it into livefeed's ordinary `event` frame (id: the event id, as in `pubsub`
mode) before any client sees it.
"""

from __future__ import annotations

import msgspec

from livefeed.schemas.frames import event_frame


class NewNewsletter(msgspec.Struct, frozen=True, tag="new_newsletter", tag_field="type"):
    newsletter: msgspec.Raw  # the event JSON, as ingest encoded it (with its id)
    timestamp: int  # when ingest published it, ms since the epoch


class _EventId(msgspec.Struct):
    id: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(NewNewsletter)
_id_decoder = msgspec.json.Decoder(_EventId)


def new_newsletter(event_json: bytes, timestamp_ms: int) -> bytes:
    return _encoder.encode(NewNewsletter(msgspec.Raw(event_json), timestamp_ms))


def to_event_frame(message: bytes) -> bytes | None:
    """The `event` frame for a `new_newsletter` message; None for anything else."""
    try:
        note = _decoder.decode(message)
        event_id = _id_decoder.decode(note.newsletter).id
    except msgspec.DecodeError:
        return None
    return event_frame(event_id, bytes(note.newsletter))

"""The newsletter event as it arrives on ingest, travels the streams and reaches clients."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

UserId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Subject = Annotated[str, Meta(max_length=998)]
Sender = Annotated[str, Meta(max_length=320)]
Category = Annotated[str, Meta(max_length=64)]
Preview = Annotated[str, Meta(max_length=2000)]
# RFC 3339 with an offset: a naive time would be read differently by every consumer.
Timestamp = Annotated[datetime, Meta(tz=True)]

MAX_BATCH_EVENTS = 1000
MAX_BODY_BYTES = 1024 * 1024


class Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One newsletter for one user. `id` is the idempotency key; ingest assigns one if absent."""

    user_id: UserId
    subject: Subject
    sender: Sender
    received_at: Timestamp
    id: uuid.UUID | None = None
    category: Category | None = None
    preview: Preview | None = None

    def with_id(self) -> Event:
        return self if self.id is not None else msgspec.structs.replace(self, id=uuid.uuid4())


# Ingest accepts a single event or a list of them.
IngestBody = Event | list[Event]

_json_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)
_body_decoder = msgspec.json.Decoder(IngestBody)


def encode_event(event: Event) -> bytes:
    return _json_encoder.encode(event)


def decode_event(raw: bytes | str) -> Event:
    return _event_decoder.decode(raw)


def decode_ingest_body(raw: bytes) -> list[Event]:
    """Decode a POST /v1/events body; raises msgspec.ValidationError / DecodeError."""
    body = _body_decoder.decode(raw)
    return body if isinstance(body, list) else [body]

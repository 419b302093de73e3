"""The newsletter event as it arrives on ingest, travels the streams and reaches clients.

What ingest accepts, PostgreSQL can store: an accepted event that the database refuses
would be shown live, then dead-lettered and never reach the history. So ingest *refuses*
(422 with the path of the field, like any other field error) rather than normalises:
silently changing a subject is worse than telling the sender.

- Text (`subject`, `sender`, `category`, `preview`) must not contain NUL (U+0000), which
  PostgreSQL `text` cannot hold. Lone surrogates and invalid UTF-8 cannot reach a decoded
  `str` (the JSON decoder refuses them), so every other string is valid `text`.
- `received_at` must lie within years 1-9999 once converted to UTC, the range a Python
  `datetime` (and so asyncpg's `timestamptz` codec) can represent: `9999-12-31T23:59:59-23:59`
  or `0001-01-01T00:00:00+01:00` have a valid local date but no UTC one. The two end
  instants themselves are refused too: asyncpg stores them as `infinity`/`-infinity` and
  reads them back without a time zone.
- `user_id` is 1-128 characters of `A-Za-z0-9._:-`, the whole string (`"alice\\n"` is
  refused); `valid_user_id` applies the same rule wherever else a user id is accepted.

Stream payloads are held to the NUL rule too (a payload an older gateway accepted fails at
decode, not at every insert); a time beyond the range is left to the database to refuse.

Evolution: HTTP bodies are decoded strictly (an unknown field is a 422, so a typo is not
silently dropped); stream payloads leniently (unknown fields are ignored, so during a rolling
upgrade a newer gateway that adds a field does not make older consumers dead-letter it).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated

import msgspec
from msgspec import Meta

# msgspec applies `pattern` with re.search semantics: anchor with \A and \Z, because `$`
# also matches before a final newline.
USER_ID_PATTERN = r"\A[A-Za-z0-9._:-]{1,128}\Z"
USER_ID_RULE = "1-128 characters of A-Za-z0-9._:-"  # the pattern, for error messages

UserId = Annotated[str, Meta(pattern=USER_ID_PATTERN)]
Subject = Annotated[str, Meta(max_length=998)]
Sender = Annotated[str, Meta(max_length=320)]
Category = Annotated[str, Meta(max_length=64)]
Preview = Annotated[str, Meta(max_length=2000)]
# RFC 3339 with an offset: a naive time would be read differently by every consumer.
Timestamp = Annotated[dt.datetime, Meta(tz=True)]

MAX_BATCH_EVENTS = 1000
MAX_BODY_BYTES = 1024 * 1024

_user_id = re.compile(USER_ID_PATTERN)


def valid_user_id(user: str) -> bool:
    """True if `user` is a user id ingest accepts (the `UserId` rule, whole string)."""
    return _user_id.search(user) is not None


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """One newsletter for one user. `id` is the idempotency key; ingest assigns one if absent.

    This is the stream payload: decoded leniently (unknown fields ignored). HTTP bodies
    are decoded as `IngestEvent`, which forbids them.
    """

    user_id: UserId
    subject: Subject
    sender: Sender
    received_at: Timestamp
    id: uuid.UUID | None = None
    category: Category | None = None
    preview: Preview | None = None

    def with_id(self) -> Event:
        return self if self.id is not None else msgspec.structs.replace(self, id=uuid.uuid4())


class IngestEvent(Event, frozen=True, forbid_unknown_fields=True):
    """An event in a `POST /v1/events` body: the same fields, no unknown ones."""


# Ingest accepts a single event or a list of them.
IngestBody = IngestEvent | list[IngestEvent]

_json_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)
_body_decoder = msgspec.json.Decoder(IngestBody)

_TEXT_FIELDS = ("subject", "sender", "category", "preview")
# JSON strings cannot hold a raw control character: a NUL arrives as this escape, so a
# payload without it needs no look at its strings (the common case costs one bytes scan).
_NUL_ESCAPE = b"\\u0000"
_FIRST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LAST = dt.datetime.max.replace(tzinfo=dt.UTC)


def storable_time(value: dt.datetime) -> bool:
    """True if `value` is strictly between the first and last instant of years 1-9999 UTC:
    what asyncpg binds to `timestamptz` as that very time (the end instants become
    -infinity/infinity, anything beyond does not convert to UTC)."""
    if 1 < value.year < 9999:  # an offset moves the date by less than a day
        return True
    try:
        return _FIRST < value.astimezone(dt.UTC) < _LAST
    except OverflowError:
        return False


def _nul_field(event: Event) -> str | None:
    for name in _TEXT_FIELDS:
        value = getattr(event, name)
        if value is not None and "\x00" in value:
            return name
    return None


def _refuse(where: str, field: str, expected: str) -> msgspec.ValidationError:
    # msgspec's own wording and path suffix, so every field error reads (and parses) alike.
    return msgspec.ValidationError(f"Expected {expected} - at `{where}.{field}`")


_NO_NUL = "`str` without NUL (U+0000), which PostgreSQL text cannot store"


def encode_event(event: Event) -> bytes:
    return _json_encoder.encode(event)


def decode_event(raw: bytes | str) -> Event:
    """Decode a stream payload (lenient: unknown fields are ignored; NUL is refused)."""
    event = _event_decoder.decode(raw)
    nul = _NUL_ESCAPE in raw if isinstance(raw, bytes) else "\x00" in raw or "\\u0000" in raw
    if nul and (field := _nul_field(event)) is not None:
        raise _refuse("$", field, _NO_NUL)
    return event


def decode_ingest_body(raw: bytes) -> list[Event]:
    """Decode a POST /v1/events body; raises msgspec.ValidationError / DecodeError.

    A ValidationError names the path of the field (`... - at `$[3].subject``).
    """
    body = _body_decoder.decode(raw)
    events: list[Event] = list(body) if isinstance(body, list) else [body]
    nul = _NUL_ESCAPE in raw
    for i, event in enumerate(events):
        if nul and (field := _nul_field(event)) is not None:
            raise _refuse(_where(body, i), field, _NO_NUL)
        if not storable_time(event.received_at):
            raise _refuse(_where(body, i), "received_at", "a time within years 1-9999 in UTC, "
                          "after its first and before its last instant")
    return events


def _where(body: object, i: int) -> str:
    return f"$[{i}]" if isinstance(body, list) else "$"

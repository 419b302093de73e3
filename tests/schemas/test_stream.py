"""The ingest stream entry: its field names are a contract between running versions."""

from __future__ import annotations

import datetime as dt
import uuid

from livefeed.schemas.event import Event, decode_event
from livefeed.schemas.stream import IngestEntry, parse_ingest


def test_the_entry_fields_are_event_id_user_and_data() -> None:
    event = Event(id=uuid.uuid4(), user_id="alice", subject="Hi", sender="a@b.c",
                  received_at=dt.datetime.now(dt.UTC))
    entry = IngestEntry.of(event)
    # A rename would strand every entry written by the previous version: never change them.
    assert list(entry.fields()) == ["event_id", "user", "data"]
    assert entry.fields()["event_id"] == str(event.id) and entry.user == "alice"
    assert decode_event(entry.data) == event
    as_read = {k.encode(): v.encode() if isinstance(v, str) else v
               for k, v in entry.fields().items()}
    assert parse_ingest(as_read) == entry


def test_a_malformed_entry_names_what_is_missing() -> None:
    assert parse_ingest({b"data": b"{}"}) == "malformed entry: missing field(s) event_id, user"
    assert parse_ingest({}) == "malformed entry: missing field(s) event_id, user, data"

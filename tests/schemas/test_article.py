"""`list` mode's live message: the article's `new_newsletter`, turned into an `event` frame."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from livefeed.schemas.article import new_newsletter, to_event_frame
from livefeed.schemas.event import Event, encode_event
from livefeed.schemas.frames import EventFrame, decode_frame


def test_new_newsletter_becomes_the_event_frame_of_the_event() -> None:
    event = Event(id=uuid.uuid4(), user_id="ann", subject="Hi", sender="a@example.com",
                  received_at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    data = encode_event(event)
    message = new_newsletter(data, 1_767_312_000_123)
    assert msgspec.json.decode(message) == {
        "type": "new_newsletter", "newsletter": msgspec.json.decode(data),
        "timestamp": 1_767_312_000_123}
    frame = decode_frame(to_event_frame(message) or b"")
    assert isinstance(frame, EventFrame)
    assert frame.id == str(event.id) and bytes(frame.data) == data


def test_anything_else_is_no_frame() -> None:
    for other in (b"", b"{}", b'{"type":"event","id":"1","data":{}}', b"not json",
                  b'{"type":"new_newsletter","newsletter":{"no":"id"},"timestamp":1}'):
        assert to_event_frame(other) is None, other


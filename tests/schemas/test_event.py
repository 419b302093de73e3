from __future__ import annotations

import msgspec
import pytest

from livefeed.schemas.event import decode_ingest_body, encode_event
from livefeed.schemas.frames import (
    EventFrame,
    Hello,
    Reset,
    decode_frame,
    encode_frame,
    event_frame,
)

GOOD = (b'{"user_id":"alice","subject":"Hi","sender":"a@b.c",'
        b'"received_at":"2026-11-30T10:00:00+00:00"}')


def test_single_event_or_array() -> None:
    assert len(decode_ingest_body(GOOD)) == 1
    assert len(decode_ingest_body(b"[" + GOOD + b"," + GOOD + b"]")) == 2


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (GOOD.replace(b'"alice"', b'"al ice"'), "$.user_id"),
        (GOOD.replace(b'"Hi"', b'"' + b"x" * 999 + b'"'), "$.subject"),
        (GOOD.replace(b"+00:00", b""), "$.received_at"),
        (b"[" + GOOD + b"," + GOOD.replace(b'"a@b.c"', b"1") + b"]", "$[1].sender"),
        (GOOD[:-1] + b',"id":"not-a-uuid"}', "$.id"),
        (GOOD[:-1] + b',"extra":1}', "extra"),
    ],
)
def test_field_errors_name_the_path(body: bytes, path: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        decode_ingest_body(body)
    assert path in str(info.value)


def test_missing_required_field() -> None:
    with pytest.raises(msgspec.ValidationError, match="sender"):
        decode_ingest_body(b'{"user_id":"a","subject":"s","received_at":"2026-01-01T00:00:00Z"}')


def test_with_id_assigns_once() -> None:
    event = decode_ingest_body(GOOD)[0]
    assert event.id is None
    with_id = event.with_id()
    assert with_id.id is not None and with_id.with_id() is with_id
    assert b'"id":"' in encode_event(with_id)


def test_event_frame_bytes_decode_as_the_tagged_union() -> None:
    raw = event_frame("1-0", encode_event(decode_ingest_body(GOOD)[0]))
    frame = decode_frame(raw)
    assert isinstance(frame, EventFrame) and frame.id == "1-0"
    assert msgspec.json.decode(frame.data)["user_id"] == "alice"
    assert raw == encode_frame(EventFrame(id="1-0", data=frame.data))
    assert decode_frame(encode_frame(Hello(user="u", mode="streams"))) == Hello("u", "streams")
    assert encode_frame(Reset(reason="trimmed")) == b'{"type":"reset","reason":"trimmed"}'

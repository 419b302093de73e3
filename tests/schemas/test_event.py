from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from livefeed.schemas.event import decode_event, decode_ingest_body, encode_event, valid_user_id
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
        # What PostgreSQL cannot store is refused with the path, not accepted and lost.
        (GOOD.replace(b'"Hi"', b'"H\\u0000i"'), "$.subject"),
        (b"[" + GOOD + b"," + GOOD.replace(b'"a@b.c"', b'"a\\u0000"') + b"]", "$[1].sender"),
        (GOOD[:-1] + b',"category":"\\u0000"}', "$.category"),
        (GOOD[:-1] + b',"preview":"ok\\u0000"}', "$.preview"),
        (GOOD.replace(b"2026-11-30T10:00:00+00:00", b"9999-12-31T23:59:59-23:59"),
         "$.received_at"),
        (b"[" + GOOD + b"," + GOOD.replace(b"2026-11-30T10:00:00+00:00",
                                           b"0001-01-01T00:00:00+01:00") + b"]",
         "$[1].received_at"),
        # `$` would match before a final newline: the user id pattern is anchored with \Z.
        (GOOD.replace(b'"alice"', b'"alice\\n"'), "$.user_id"),
        (GOOD.replace(b'"alice"', b'"' + b"a" * 129 + b'"'), "$.user_id"),
    ],
)
def test_field_errors_name_the_path(body: bytes, path: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        decode_ingest_body(body)
    assert path in str(info.value)
    if path.startswith("$"):  # exactly that path, which ingest answers as `path`
        assert str(info.value).endswith(f" - at `{path}`")


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00.000001+00:00", "0001-01-01T00:00:00-01:00",
             "9999-12-31T23:59:59.999998+00:00", "9999-12-31T23:59:59+01:00"])
def test_times_at_the_edges_of_the_utc_range_are_accepted(when: str) -> None:
    body = GOOD.replace(b"2026-11-30T10:00:00+00:00", when.encode())
    assert decode_ingest_body(body)[0].received_at == dt.datetime.fromisoformat(when)


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999Z",
             "9999-12-31T22:59:59.999999-01:00", "0001-01-01T01:00:00+01:00"])
def test_the_end_instants_are_refused(when: str) -> None:
    # asyncpg would store them as -infinity/infinity and read them back without a zone.
    body = GOOD.replace(b"2026-11-30T10:00:00+00:00", when.encode())
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.received_at`"):
        decode_ingest_body(body)


def test_text_that_postgres_stores_is_accepted_unchanged() -> None:
    text = "tab\tnewline\n\u00e9 \U0001f600 \ufeff\uffff end\u007f"
    body = GOOD.replace(b'"Hi"', msgspec.json.encode(text))
    assert decode_ingest_body(body)[0].subject == text


@pytest.mark.parametrize("raw", [b'"\\ud800"', b'"\\udc00x"', b'"\xed\xa0\x80"', b'"\xff"',
                                 b'"a\x00b"'])
def test_raw_nul_lone_surrogates_and_bad_utf8_never_become_a_str(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_ingest_body(GOOD.replace(b'"Hi"', raw))


@pytest.mark.parametrize(
    ("user", "valid"),
    [("alice", True), ("a.b_c:d-1", True), ("x" * 128, True), ("", False), ("x" * 129, False),
     ("alice\n", False), ("\nalice", False), ("al ice", False), ("\u00e9", False),
     ("alice\x00", False)])
def test_valid_user_id_is_the_schema_rule(user: str, valid: bool) -> None:
    assert valid_user_id(user) is valid
    body = GOOD.replace(b'"alice"', msgspec.json.encode(user))
    if valid:
        assert decode_ingest_body(body)[0].user_id == user
    else:
        with pytest.raises(msgspec.ValidationError, match=r"at `\$\.user_id`"):
            decode_ingest_body(body)


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


def test_stream_payloads_ignore_unknown_fields_but_refuse_nul() -> None:
    newer = GOOD[:-1] + b',"priority":1,"labels":["x"]}'
    assert encode_event(decode_event(newer)) == encode_event(decode_event(GOOD))
    assert encode_event(decode_event(newer.decode())) == encode_event(decode_event(GOOD))
    nul = GOOD.replace(b'"Hi"', b'"H\\u0000i"')
    for raw in (nul, nul.decode()):
        with pytest.raises(msgspec.ValidationError, match=r"NUL .* - at `\$\.subject`$"):
            decode_event(raw)
    # An escaped backslash before u0000 is text, not a NUL.
    text = GOOD.replace(b'"Hi"', b'"\\\\u0000"')
    assert decode_event(text).subject == "\\u0000"
    assert decode_ingest_body(text)[0].subject == "\\u0000"

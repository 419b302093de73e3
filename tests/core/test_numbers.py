"""Numbers and stream ids from input: ASCII digits only, within range, never a crash."""

from __future__ import annotations

import pytest

from livefeed.core.eventlog import parse_stream_id
from livefeed.core.numbers import parse_int

U64_MAX = (1 << 64) - 1


@pytest.mark.parametrize("text", [
    "", "-", "1-", "-1", "1--1", "1-1-1", " 1-1", "1-1 ", "1-1\n", "+1-1", "1_0-1", "0x1-0",
    "²", "1-²", "๙", "๙-1", "１-1", "1-٣", "99999999999999999999999-0", "0-18446744073709551616",
    "18446744073709551616", "9" * 5000, "1" * 21 + "-0", "1.5-0", "a-b",
])
def test_what_is_no_stream_id(text: str) -> None:
    assert parse_stream_id(text) is None


@pytest.mark.parametrize(("text", "parsed"), [
    ("0-0", (0, 0)), ("5", (5, 0)), ("1700000000000-3", (1700000000000, 3)),
    (f"{U64_MAX}-{U64_MAX}", (U64_MAX, U64_MAX)), ("007-01", (7, 1)),
])
def test_stream_ids(text: str, parsed: tuple[int, int]) -> None:
    assert parse_stream_id(text) == parsed


@pytest.mark.parametrize("text", ["", " 5", "5 ", "²", "๙", "１", "1_0", "+5", "5.0", "0x5",
                                  "9" * 20, "9" * 5000, "1e3"])
def test_parse_int_refuses_what_int_would_take_or_choke_on(text: str) -> None:
    with pytest.raises(ValueError, match="limit: expected a whole number within 1..100"):
        parse_int(text, 1, 100, "limit")


def test_parse_int_range() -> None:
    assert parse_int("100", 1, 100, "limit") == 100
    for text in ("0", "101", "-3", "9" * 19):
        with pytest.raises(ValueError, match="limit: must be within 1..100"):
            parse_int(text, 1, 100, "limit")

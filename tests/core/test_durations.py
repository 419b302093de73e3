"""Durations as operators type and read them."""

from __future__ import annotations

import pytest

from livefeed.core.durations import format_ms, parse_duration_ms


def test_durations() -> None:
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("30s") == 30_000
    assert parse_duration_ms("5m") == 300_000
    assert parse_duration_ms("1h") == 3_600_000
    assert parse_duration_ms("1.5s") == 1500
    assert parse_duration_ms("12") == 12_000
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms("soon")
    assert format_ms(850) == "850ms"
    assert format_ms(12_300) == "12.3s"
    assert format_ms(245_000) == "4m05s"
    assert format_ms(None) == "-"


@pytest.mark.parametrize("text", ["๙s", "１s", "²", "1e3", "-5s", "5 s s", "9" * 5000,
                                  "9" * 400 + "d", "1.5.5s", "\x1b[31m5s"])
def test_what_is_no_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms(text)


def test_durations_are_bounded() -> None:
    assert parse_duration_ms("3650d") == 3650 * 86_400_000
    for text in ("3651d", "99999999999999d", "999999999999999m"):
        with pytest.raises(ValueError, match="too long a duration"):
            parse_duration_ms(text)

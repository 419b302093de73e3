"""Durations as operators type and read them: `250ms`, `30s`, `5m`, `1h`, `2d`."""

from __future__ import annotations

import re

# ASCII digits only (`\d` and `float` also take `๙` and full-width digits), and few of them.
_DURATION = re.compile(r"\s*([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*(ms|s|m|h|d)?\s*", re.ASCII)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Longer than anything waits; Redis takes any 64-bit count of milliseconds, this is saner.
MAX_DURATION_MS = 3650 * 86_400_000


def parse_duration_ms(text: str) -> int:
    """`250ms`, `30s`, `5m`, `1h`, `2d` (a bare number is seconds) as milliseconds, up to
    3650 days; ValueError for anything else."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text[:40]!r} is not a duration: use e.g. 250ms, 30s, 5m, 1h")
    number, unit = match.groups()
    ms = int(float(number) * _UNIT_MS[unit or "s"])
    if ms > MAX_DURATION_MS:
        raise ValueError(f"{text[:40]!r} is too long a duration: at most 3650d")
    return ms


def format_ms(ms: int | None) -> str:
    """A short human duration: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, s_ = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s_:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"

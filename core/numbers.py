"""Whole numbers as operators and clients type them: ASCII digits only, within a range.

`int()` is too lenient for input: it takes `²`, `๙` and full-width digits, `_`, spaces
and signs, and raises past 4,300 digits; these checks say what was wrong instead.
"""

from __future__ import annotations

import re

_INTEGER = re.compile(r"-?[0-9]{1,19}", re.ASCII)


def parse_int(text: str, low: int, high: int, what: str) -> int:
    """`text` as an integer within `low..high`, or ValueError naming `what` (if given)
    and the range."""
    head = f"{what}: " if what else ""
    if _INTEGER.fullmatch(text) is None:
        raise ValueError(f"{head}expected a whole number within {low}..{high}, "
                         f"got {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{head}must be within {low}..{high}, got {value}")
    return value

"""Summary statistics the bench and compare reports share."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty.

    The value at rank ceil(q/100 * n) of the sorted values (rank 1 for q = 0): the p99 of
    1..100 is 99, the p100 is 100. Never interpolated, so it is always a measured value.
    """
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]

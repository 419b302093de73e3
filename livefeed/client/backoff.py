"""Full-jitter exponential backoff (as centrifuge-js and Socket.IO reconnect)."""

from __future__ import annotations

import random


class Backoff:
    __slots__ = ("base_s", "cap_s", "attempt")

    def __init__(self, base_s: float = 0.1, cap_s: float = 10.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0

    def next(self) -> float:
        """Seconds to wait before the next try: uniform in [0, min(cap, base * 2^n)]."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0

"""One timer per process for the deadlines of every live connection.

A connection's keepalive ping, its token's expiry and its protocol deadlines (the auth
message, the close handshake) are entries of one heap here, served by a single event-loop
timer armed on a tick grid (every `tick_s`, 50 ms by default), instead of a timer handle or
a task per connection. So a deadline fires up to one tick late, never early, and many
deadlines due within one tick fire on one wake-up.

An entry is a `Due` object and the monotonic time it is due at; nothing is ever removed:
when the entry comes up, `due(now)` is called, and the object checks its own state (the
deadline may have moved or be moot; an entry it superseded with an earlier one comes up
after that one did, and is ignored) and schedules itself again if it still needs to.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from typing import Protocol

logger = logging.getLogger(__name__)

TICK_S = 0.05


class Due(Protocol):
    def due(self, now: float) -> None:
        """Its deadline (or an earlier one it moved on from) came: act, or schedule again."""
        ...


class Deadlines:
    """The deadlines of one event loop's connections (`time.monotonic()` clock)."""

    __slots__ = ("tick_s", "_heap", "_seq", "_timer", "_armed_at")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._heap: list[tuple[float, int, Due]] = []
        self._seq = itertools.count()  # ties go in order, and Due objects are never compared
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, when: float, target: Due) -> None:
        """Call `target.due(now)` once `time.monotonic()` passed `when` (within a tick)."""
        heapq.heappush(self._heap, (when, next(self._seq), target))
        if when < self._armed_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        # On the tick grid: deadlines within one tick share the wake-up.
        at = math.ceil(when / self.tick_s) * self.tick_s
        if at >= self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = at
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, at - time.monotonic()), self._run)

    def _run(self) -> None:
        self._timer, self._armed_at = None, math.inf
        now = time.monotonic()
        heap = self._heap
        came = []
        while heap and heap[0][0] <= now:
            came.append(heapq.heappop(heap)[2])
        # (Entries these add, even for now, wait for the next wake-up.)
        for target in came:
            try:
                target.due(now)
            except Exception:
                logger.exception("a connection's deadline failed")
        if heap:
            self._arm(heap[0][0])

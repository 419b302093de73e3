"""gateway/deadlines.py: the one timer behind every live connection's deadlines."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from livefeed.gateway.deadlines import Deadlines

pytestmark = pytest.mark.anyio


@dataclass(eq=False)
class Target:
    """A Due that records when it fired, and may ask to fire again or fail."""

    name: str
    log: list[tuple[str, float, float]]
    deadlines: Deadlines
    again_in: float | None = None
    fail: bool = False
    wanted: float = 0.0

    def at(self, when: float) -> None:
        self.wanted = when
        self.deadlines.at(when, self)

    def due(self, now: float) -> None:
        self.log.append((self.name, self.wanted, now))
        if self.fail:
            raise RuntimeError("boom")
        if self.again_in is not None:
            again, self.again_in = self.again_in, None
            self.at(now + again)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_deadlines_fire_in_order_never_early_on_one_timer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    deadlines = Deadlines(tick_s=0.05)
    armed: list[float] = []
    loop = asyncio.get_running_loop()
    call_later = loop.call_later

    def counting(delay: float, callback: Any, *args: object) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None) is deadlines:
            armed.append(delay)
        return call_later(delay, callback, *args)

    monkeypatch.setattr(loop, "call_later", counting)
    log: list[tuple[str, float, float]] = []
    now = time.monotonic()
    # 100 connections due within one tick, plus a later and an earlier one.
    for i in range(100):
        Target(f"c{i}", log, deadlines).at(now + 0.2 + i / 10_000)
    Target("late", log, deadlines).at(now + 0.4)
    Target("early", log, deadlines).at(now + 0.1)  # re-arms the timer earlier
    assert len(deadlines) == 102
    with anyio.fail_after(5):
        while len(log) < 102:
            await anyio.sleep(0.02)
    names = [name for name, _, _ in log]
    assert names[0] == "early" and names[-1] == "late"
    assert sorted(names[1:-1], key=lambda n: int(n[1:])) == names[1:-1]  # in time order
    assert all(fired >= wanted for _, wanted, fired in log), "a deadline fired early"
    # One timer: armed for the first deadline, earlier for `early`, then once per wake-up
    # (the hundred due within one tick share theirs), never once per connection.
    assert len(armed) <= 5, armed
    assert len(deadlines) == 0


async def test_a_deadline_may_come_again_and_one_that_fails_stops_no_other(
        caplog: pytest.LogCaptureFixture) -> None:
    deadlines = Deadlines(tick_s=0.02)
    log: list[tuple[str, float, float]] = []
    now = time.monotonic()
    Target("again", log, deadlines, again_in=0.1).at(now + 0.05)
    Target("fails", log, deadlines, fail=True).at(now + 0.05)
    Target("after", log, deadlines).at(now + 0.06)
    with caplog.at_level(logging.ERROR, "livefeed.gateway.deadlines"), anyio.fail_after(5):
        while len(log) < 4:
            await anyio.sleep(0.02)
    assert sorted(name for name, _, _ in log) == ["after", "again", "again", "fails"]
    again = [(wanted, fired) for name, wanted, fired in log if name == "again"]
    assert again[1][0] >= again[0][1] + 0.1 and again[1][1] >= again[1][0]
    assert "a connection's deadline failed" in caplog.text

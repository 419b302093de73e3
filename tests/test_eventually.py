"""The tests' one polling helper: returns once the check holds, else fails saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.waiting import eventually
from tests.procs import Proc


async def test_returns_once_a_sync_or_async_check_holds() -> None:
    calls: list[int] = []

    def sync_check() -> bool:
        calls.append(1)
        return len(calls) >= 3

    await eventually(sync_check, timeout=10)
    assert len(calls) == 3

    async def async_check() -> int:
        calls.append(1)
        return len(calls) >= 5

    await eventually(async_check, timeout=10)
    assert len(calls) == 5


async def test_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="no green light after 0.1s"):
        await eventually(lambda: False, what="green light", timeout=0.1)


async def test_fails_when_a_watched_process_exits(tmp_path: Path) -> None:
    proc = Proc(["--help"], None, tmp_path, name="helper").start()
    try:
        with pytest.raises(AssertionError, match="helper exited while waiting for never") as e:
            await eventually(lambda: False, what="never", procs=(proc,), timeout=60)
        assert "usage: livefeed" in str(e.value)  # with its log
    finally:
        proc.kill()

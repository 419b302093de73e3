"""`eventually`: wait for a condition that the system under test reaches on its own."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import anyio

from tests.procs import Proc


async def eventually(check: Callable[[], object], *, what: str = "the expected state",
                     timeout: float = 30, procs: Sequence[Proc] = (),
                     interval: float = 0.02) -> None:
    """Poll `check` (a function, or a coroutine function) until it returns something true.

    Fails with an AssertionError naming `what` once `timeout` seconds have passed (a hung
    check included), or at once when one of `procs` has exited; either way with the
    processes' logs. The timeout bounds the wait; it asserts nothing about timing.
    """
    with anyio.move_on_after(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            for p in procs:
                if not p.alive():
                    raise AssertionError(f"{p.name} exited while waiting for {what}:\n"
                                         f"{p.output()}")
            await anyio.sleep(interval)
    logs = "".join(f"\n--- {p.name}\n{p.output()}" for p in procs)
    raise AssertionError(f"no {what} after {timeout:g}s{logs}")

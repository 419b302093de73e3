"""The live sessions of one gateway process, and how a transport runs one.

The drain stops every session through one `Sessions` registry (one watcher per process
instead of one task per connection); `run_with` runs a session in the connection's own
task, with one more task that watches for the client leaving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio

from livefeed.gateway.live import Session
from livefeed.schemas.frames import CloseCode

logger = logging.getLogger(__name__)


class Sessions:
    """The live sessions of one gateway process, so that the drain stops them all at once."""

    def __init__(self) -> None:
        self._live: set[Session] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._live)

    def add(self, session: Session) -> None:
        if self.draining:
            session.stop(CloseCode.DRAINING)
        else:
            self._live.add(session)

    def discard(self, session: Session) -> None:
        self._live.discard(session)

    def drain(self) -> None:
        """Stop every session with CloseCode.DRAINING, and every session added from now on."""
        self.draining = True
        live, self._live = self._live, set()
        for session in live:
            session.stop(CloseCode.DRAINING)

    async def drain_on(self, draining: anyio.Event) -> None:
        await draining.wait()
        self.drain()


async def run_with(session: Session, sessions: Sessions,
                   watch: Callable[[], Awaitable[object]]) -> int | None:
    """Run `session` in this task and `watch` (which returns when the client is gone) in
    one more; whichever ends first ends the other. Returns what `session.run` returns."""

    async def watcher() -> None:
        try:
            await watch()
        finally:
            session.stop()

    task = asyncio.create_task(watcher())
    task.add_done_callback(_log_failure)
    sessions.add(session)
    try:
        return await session.run()
    finally:
        sessions.discard(session)
        task.cancel()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("watcher of a live session failed", exc_info=exc)

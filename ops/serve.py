"""Run the gateway under uvicorn inside the caller's event loop, with our own signals.

uvicorn re-raises SIGTERM after `serve()` returns, which would kill the process before
our `finally` blocks (embedded servers, consumers) run; so we take the signals ourselves.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import uvicorn

logger = logging.getLogger(__name__)


def uvicorn_config(app: Any, *, host: str, port: int, log_level: str = "warning",
                   **kw: Any) -> uvicorn.Config:
    # wsproto: about a fifth of the memory per idle WebSocket of the `websockets` backend.
    return uvicorn.Config(
        app, host=host, port=port, ws="wsproto", lifespan="on", log_level=log_level.lower(),
        timeout_graceful_shutdown=15, **kw,
    )


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def stop_on_signals(on_stop: Callable[[], None]) -> None:
    """Call `on_stop` on the first SIGTERM/SIGINT; a second one exits at once."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for sig in signals:
            logger.info("%s: draining", signal.Signals(sig).name)
            on_stop()
            break
        async for _ in signals:
            raise SystemExit(130)


def draining_hook(app: Any) -> Callable[[], None]:
    """Tells the app its live streams must end (uvicorn closes WebSockets, not SSE)."""

    def drain() -> None:
        state = getattr(app.state, "lf", None)
        if state is not None:
            state.draining.set()

    return drain


async def serve(app: Any, *, host: str, port: int, log_level: str = "warning",
                on_stop: Callable[[], None] | None = None, fd: int | None = None) -> None:
    """Serve `app` until SIGTERM/SIGINT, then drain: sockets close, SSE streams end.
    `fd`: serve on this inherited listening socket instead (`gateway --workers`)."""
    server = Server(uvicorn_config(app, host=host, port=port, log_level=log_level, fd=fd))
    drain = draining_hook(app)

    def stop() -> None:
        drain()
        server.should_exit = True
        if on_stop is not None:
            on_stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, stop)
        await server.serve()
        tg.cancel_scope.cancel()

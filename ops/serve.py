"""Run the gateway under uvicorn inside the caller's event loop, with our own signals.

uvicorn re-raises SIGTERM after `serve()` returns, which would kill the process before
our `finally` blocks (embedded servers, consumers) run; so we take the signals ourselves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import uvicorn

from livefeed.core.settings import Settings
from livefeed.ops import livews, logredact
from livefeed.ops.protocols import Bounds

logger = logging.getLogger(__name__)


DRAIN_TIMEOUT_S = 10.0


def uvicorn_config(app: Any, *, host: str, port: int, log_level: str = "warning",
                   drain_timeout_s: float = DRAIN_TIMEOUT_S, bounds: Bounds | None = None,
                   **kw: Any) -> uvicorn.Config:
    """uvicorn for the gateway: wsproto, no compression, drained within `drain_timeout_s`,
    with header/body deadlines and inbound WebSocket bounds (`ops/protocols.py`; default:
    the settings' defaults); `/v1/ws` of a gateway app on its own protocol
    (`ops/livews.py`); its logs (and ours) never show a token (`ops/logredact.py`)."""
    bounds = bounds or Bounds(Settings())
    upgrade = livews.LiveUpgrade(app, bounds) if livews.serves(app) else None
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level.lower(), lifespan="on",
        # `/v1/ws` on the gateway's own protocol (ops.livews); other WebSockets on wsproto
        # (ops.protocols.BoundedWs): the least memory per idle WebSocket of uvicorn's
        # implementations; httptools (BoundedHttp) for HTTP.
        **bounds.config(upgrade),
        # permessage-deflate keeps zlib state per connection (137.7 KiB per idle socket vs
        # 46.7 KiB without, measured): every browser offers it, and frames are small JSON.
        ws_per_message_deflate=False,
        # After SIGTERM, connections still open this long (a client that does not answer
        # the close, a stuck send) are cancelled.
        timeout_graceful_shutdown=max(1, math.ceil(drain_timeout_s)),
        **kw,
    )
    # After the Config: it configures uvicorn's loggers and handlers.
    logredact.install()
    return config


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
                on_stop: Callable[[], None] | None = None, fd: int | None = None,
                drain_timeout_s: float = DRAIN_TIMEOUT_S, bounds: Bounds | None = None) -> None:
    """Serve `app` until SIGTERM/SIGINT, then drain: sockets close, SSE streams end, all
    within `drain_timeout_s` (`LIVEFEED_DRAIN_TIMEOUT`).
    `fd`: serve on this inherited listening socket instead (`gateway --workers`)."""
    server = Server(uvicorn_config(app, host=host, port=port, log_level=log_level, fd=fd,
                                   drain_timeout_s=drain_timeout_s, bounds=bounds))
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

"""`livefeed gateway`: HTTP ingest, WebSocket, SSE, history, admin and metrics; with
`--workers N`, N processes sharing the port (`ops/workers.py`)."""

from __future__ import annotations

import argparse
import logging

from livefeed.core import heap
from livefeed.core.settings import Settings
from livefeed.gateway.app import create_app
from livefeed.ops import runtime, serve
from livefeed.ops.commands import Subparsers, port, whole
from livefeed.ops.protocols import Bounds

logger = logging.getLogger(__name__)


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "gateway", parents=[parent], help="run a gateway (HTTP ingest, WebSocket, SSE, admin)",
        description="Serve ingest, live delivery, history, admin and metrics. Several gateways "
        "may run against one Redis; any client can land on any of them.",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="listen port (default 8000)")
    p.add_argument("--workers", type=whole(1, 256), default=1,
                   help="gateway processes sharing the port (default 1)")
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # set by --workers for children
    p.set_defaults(func=gateway)


async def gateway(args: argparse.Namespace, settings: Settings) -> int:
    settings = runtime.attach(settings)
    # Redis must answer now; PostgreSQL may be down: only the history needs it (it answers
    # 503 until the database is back, ingest and live delivery go on).
    await runtime.preflight(settings, database=settings.delivery == "pubsub")
    if settings.delivery != "pubsub" and (problem := await runtime.database_problem(settings)):
        logger.warning("%s; starting anyway: /v1/feed answers 503 until it does", problem)
    if args.workers > 1:
        from livefeed.ops import workers

        return await workers.run(args, settings)
    app = create_app(settings)
    heap.settle()
    await serve.serve(app, host=args.host, port=args.port,
                      log_level=settings.log_level, fd=args.fd,
                      drain_timeout_s=settings.drain_timeout_s, bounds=Bounds(settings))
    return 0

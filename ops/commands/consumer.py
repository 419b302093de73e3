"""`livefeed consumer persist|fanout`: one consumer of one group, until SIGTERM drains it."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable

import anyio
import msgspec
import prometheus_client

from livefeed.consumers import fanout, persist
from livefeed.core.settings import Settings
from livefeed.ops import runtime, serve
from livefeed.ops.commands import Subparsers

logger = logging.getLogger(__name__)

Role = Callable[..., Awaitable[None]]
ROLES: dict[str, Role] = {"persist": persist.run, "fanout": fanout.run}


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "consumer", parents=[parent], help="run one consumer: persist (PostgreSQL) or fanout",
        description="Run one consumer of the `persist` group (batched writes to PostgreSQL) "
        "or the `fanout` group (per-user feed streams and live publish). Run several with "
        "different --name values to share the work; SIGTERM finishes or releases the batch.",
    )
    p.add_argument("role", choices=sorted(ROLES), help="which group to consume for")
    p.add_argument("--name", default=None,
                   help="consumer name in the group (default: hostname-pid); reuse it on "
                   "restart to resume this consumer's pending entries at once")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve this consumer's Prometheus metrics on 127.0.0.1:PORT")
    p.set_defaults(func=consumer)


async def consumer(args: argparse.Namespace, settings: Settings) -> int:
    settings = runtime.attach(settings)
    # Redis must answer now; PostgreSQL may be down: persist waits for it, fanout never needs it.
    await runtime.preflight(msgspec.structs.replace(settings, database_url=None))
    if args.metrics_port is not None:
        prometheus_client.start_http_server(args.metrics_port, addr="127.0.0.1")
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve.stop_on_signals, stopping.set)
        await ROLES[args.role](settings, stopping, name=args.name)
        tg.cancel_scope.cancel()
    return 0

"""`livefeed consumer persist|fanout`: one consumer of one group, until SIGTERM drains it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

import anyio
import uvicorn

from livefeed.consumers import fanout, persist
from livefeed.core import redis_client
from livefeed.core.settings import Settings
from livefeed.ops import runtime, serve
from livefeed.ops.commands import Subparsers, port
from livefeed.ops.consumer_probes import probe_app

logger = logging.getLogger(__name__)

Role = Callable[..., Awaitable[None]]
# ASCII digits, a number or a range (`int` takes `²` and `๙`); far more than any setting.
_PARTITIONS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", re.ASCII)
MAX_PARTITIONS = 256  # as LIVEFEED_PARTITIONS
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
    p.add_argument("--own-partitions", dest="own_partitions", type=partition_list,
                   default=None, metavar="LIST",
                   help="own exactly these partitions (e.g. 0-7 or 0,2,4) instead of "
                   "sharing them with the group's other consumers through leases")
    p.add_argument("--metrics-port", type=port, default=None,
                   help="serve this consumer's Prometheus metrics (/metrics) and probes "
                   "(/healthz, /readyz: what the role needs answers) on 127.0.0.1:PORT")
    p.set_defaults(func=consumer)


def partition_list(text: str) -> list[int]:
    """`0-3,7` -> [0, 1, 2, 3, 7]."""
    out: set[int] = set()
    for part in text.split(","):
        match = _PARTITIONS.fullmatch(part.strip())
        if match is None:
            raise argparse.ArgumentTypeError(
                f"{text[:80]!r}: give partition numbers and ranges, e.g. 0-7 or 0,2,4")
        low, high = int(match[1]), int(match[2] or match[1])
        if high >= MAX_PARTITIONS or low > high:
            raise argparse.ArgumentTypeError(
                f"{text[:80]!r}: partitions are numbered 0-{MAX_PARTITIONS - 1}, ranges low-high")
        out.update(range(low, high + 1))
    return sorted(out)


async def consumer(args: argparse.Namespace, settings: Settings) -> int:
    settings = runtime.attach(settings)
    # Redis must answer now; PostgreSQL may be down: persist waits for it, fanout never needs it.
    await runtime.preflight(settings, database=False)
    stopping = anyio.Event()
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as tg:
        tg.start_soon(serve.stop_on_signals, stopping.set)
        if args.metrics_port is not None:
            redis = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster)
            stack.push_async_callback(redis.aclose)
            probes = serve.Server(uvicorn.Config(
                probe_app(settings, args.role, redis), host="127.0.0.1",
                port=args.metrics_port, lifespan="off", log_level="warning"))
            tg.start_soon(probes.serve)
        await ROLES[args.role](settings, stopping, name=args.name, partitions=args.own_partitions)
        if args.metrics_port is not None:
            probes.should_exit = True
        tg.cancel_scope.cancel()
    return 0

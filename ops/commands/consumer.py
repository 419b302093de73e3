"""`livefeed consumer persist|fanout|list-writer`: one consumer of one group (or the `list`
mode's batch writer), until SIGTERM drains it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import uvicorn

from livefeed.consumers import fanout, listwriter, persist
from livefeed.core import heap, redis_client
from livefeed.core.settings import Settings
from livefeed.ops import runtime, serve
from livefeed.ops.commands import Subparsers, port, whole
from livefeed.ops.consumer_probes import probe_app

logger = logging.getLogger(__name__)

Role = Callable[..., Awaitable[None]]
# ASCII digits, a number or a range (`int` takes `²` and `๙`); far more than any setting.
_PARTITIONS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", re.ASCII)
MAX_PARTITIONS = 256  # as LIVEFEED_PARTITIONS
ROLES: dict[str, Role] = {"persist": persist.run, "fanout": fanout.run,
                         "list-writer": listwriter.run}


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "consumer", parents=[parent],
        help="run one consumer: persist (PostgreSQL), fanout, or list-writer (list mode)",
        description="Run one consumer of the `persist` group (batched writes to PostgreSQL) "
        "or the `fanout` group (per-user feed streams and live publish). Run several with "
        "different --name values to share the work; SIGTERM finishes or releases the batch. "
        "`list-writer` is the `list` delivery mode's batch writer (the article's design, for "
        "comparison): every 500 ms LMPOP up to 100 items off the write buffer, one INSERT; "
        "a batch popped and not committed is lost.",
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
    w = p.add_argument_group("list-writer")
    w.add_argument("--interval-ms", type=whole(1, 3_600_000), default=listwriter.INTERVAL_MS,
                   help="empty the List every this many ms, batch by batch (default "
                   f"{listwriter.INTERVAL_MS})")
    w.add_argument("--count", type=whole(1, 100_000), default=listwriter.COUNT,
                   help=f"LMPOP COUNT (default {listwriter.COUNT})")
    w.add_argument("--hold-file", type=Path, default=None, metavar="PATH",
                   help="while PATH exists, log 'popped N items' after each pop and wait "
                   "before the INSERT (so a test can SIGKILL the writer in its loss window)")
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
    if args.role == "list-writer" and args.own_partitions is not None:
        print("livefeed consumer: list-writer has no partitions (one List): drop "
              "--own-partitions", file=sys.stderr)
        return 2
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
        extra = {} if args.role != "list-writer" else dict(
            interval_ms=args.interval_ms, count=args.count, hold_file=args.hold_file)
        heap.settle()
        await ROLES[args.role](settings, stopping, name=args.name,
                               partitions=args.own_partitions, **extra)
        if args.metrics_port is not None:
            probes.should_exit = True
        tg.cancel_scope.cancel()
    return 0

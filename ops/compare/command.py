"""`livefeed compare`: run the scenario matrix in every delivery mode and show what each loses."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import msgspec
from rich.console import Console

from livefeed.core.embedded_cluster import EmbeddedCluster
from livefeed.core.settings import Resolved, Settings, env_name
from livefeed.ops import runtime
from livefeed.ops.commands import Subparsers
from livefeed.ops.compare import report
from livefeed.ops.compare.measure import CellResult
from livefeed.ops.compare.run import Params, run_matrix, to_json
from livefeed.ops.compare.scenarios import SCENARIOS, Scenario, describe
from livefeed.schemas.frames import Delivery

# The naive design, the article's, livefeed's: in the order the table shows them.
MODES = ("pubsub", "list", "streams")
assert set(MODES) == set(get_args(Delivery))
# Exit status when a `streams` cell lost, duplicated or failed to persist an event.
BROKEN = 3


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    defaults = Params()
    p = sub.add_parser(
        "compare", parents=[parent],
        help="measure what Pub/Sub and the article's List design lose against Streams",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run fault scenarios against the three delivery modes (pubsub: the naive "
        "design, list: the article's, streams: livefeed's), each cell on a fresh "
        "namespace (own key prefix and Postgres schema) with real gateway and consumer "
        "processes, real WebSocket clients and a load generator on POST /v1/events. Counts "
        "are made by matching event ids. Uses LIVEFEED_REDIS_URL / LIVEFEED_DATABASE_URL, "
        "else a running `livefeed up`, else starts the embedded servers.\n\nscenarios:\n"
        + "\n".join(f"  {name:<17} {SCENARIOS[name].summary}" for name in SCENARIOS)
        + "\n\nWith --cluster every cell runs on a Redis Cluster: LIVEFEED_REDIS_URL names "
        "one, else an embedded one (3 primaries x 1 replica, nothing kept) is started for the "
        "run. shard-failover needs the embedded one (it kills a primary) and runs streams mode "
        "twice: LIVEFEED_INGEST_REPLICAS=0 and =1."
        + f"\n\nExit status {BROKEN} if a streams cell lost, duplicated or failed to "
        "persist an event (a loss of shard-failover with replicas=0 is counted, not fatal).",
    )
    p.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                   help="a scenario to run (repeat for several; default: all)")
    p.add_argument("--mode", action="append", choices=MODES,
                   help="a delivery mode (repeat; default: all three)")
    p.add_argument("--duration", type=float, default=defaults.duration,
                   help=f"seconds of load per cell (default {defaults.duration:g})")
    p.add_argument("--clients", type=int, default=defaults.clients,
                   help=f"WebSocket clients per cell, two per user (default {defaults.clients})")
    p.add_argument("--rate", type=float, default=defaults.rate,
                   help=f"events per second posted (default {defaults.rate:g})")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help=f"seed for ids, users and scenario choices (default {defaults.seed})")
    p.add_argument("--auth", choices=("admin", "hmac"), default=defaults.auth,
                   help="how the load authenticates: admin bearer token or body HMAC")
    p.add_argument("--cluster", action="store_true",
                   help="run on a Redis Cluster (LIVEFEED_REDIS_URL, else an embedded one)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--report", type=Path, metavar="PATH", help="write an HTML report here")
    p.add_argument("--from-json", type=Path, metavar="PATH",
                   help="run nothing: show the table (and --report) of a saved --json output")
    p.add_argument("--logs", type=Path, metavar="DIR",
                   help="keep the processes' logs here (default: a temporary directory)")
    p.set_defaults(func=compare)


@contextlib.contextmanager
def _servers(settings: Settings, cluster: bool = False
             ) -> Iterator[tuple[Resolved, EmbeddedCluster | None]]:
    """The servers, and the embedded cluster if one was started for the run."""
    if not cluster:
        with _resolved(settings) as resolved:
            yield resolved, None
        return
    if settings.redis_url is not None:
        with _resolved(msgspec.structs.replace(settings, redis_cluster=True)) as resolved:
            yield resolved, None
        return
    with tempfile.TemporaryDirectory(prefix="livefeed-compare-cluster-") as d, \
            EmbeddedCluster(Path(d), primaries=3, replicas_per_primary=1,
                            persist=False) as embedded:
        on_it = msgspec.structs.replace(settings, redis_url=embedded.cluster_url,
                                        redis_cluster=True)
        with _resolved(on_it) as resolved:
            yield resolved, embedded


@contextlib.contextmanager
def _resolved(settings: Settings) -> Iterator[Resolved]:
    """The given URLs, else a running `livefeed up`'s servers, else embedded ones."""
    if settings.redis_url and settings.database_url:
        yield settings.resolve()
        return
    if runtime.read_runtime(settings) is not None:
        yield runtime.attach(settings)
        return
    with runtime.embedded_servers(settings) as resolved:
        yield resolved


@contextlib.contextmanager
def _log_root(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="livefeed-compare-") as d:
        yield Path(d)


def chosen(names: list[str] | None, *, cluster: bool) -> list[Scenario] | str:
    """The scenarios to run (default: all that fit), or why the choice cannot run."""
    if names is None:
        return [s for s in SCENARIOS.values() if cluster or not s.needs_cluster]
    picked = [SCENARIOS[n] for n in dict.fromkeys(names)]
    if not cluster and (need := [s.name for s in picked if s.needs_cluster]):
        return (f"{', '.join(need)} kills a Redis Cluster primary: add --cluster (with no "
                f"{env_name('redis_url')}, an embedded cluster is started for the run)")
    return picked


def _loss_allowed(c: CellResult) -> bool:
    """A loss that is the cell's documented cost: a failover without replica acks."""
    scenario = SCENARIOS.get(c.scenario)
    return bool(scenario and scenario.unreplicated_may_lose and c.ingest_replicas == 0)


def streams_broken(cells: list[CellResult]) -> bool:
    return any(
        c.mode == "streams" and not c.skipped and bool(
            c.failed or c.duplicated or c.rows_duplicate
            or (not _loss_allowed(c) and (c.lost or c.rows_missing)))
        for c in cells
    )


async def compare(args: argparse.Namespace, settings: Settings) -> int:
    params = Params(duration=args.duration, clients=args.clients, rate=args.rate,
                    seed=args.seed, auth=args.auth)
    if params.clients < 2 or params.duration <= 0 or params.rate <= 0:
        print("livefeed compare: need --clients >= 2, --duration > 0 and --rate > 0",
              file=sys.stderr)
        return 2
    if args.from_json is not None:
        saved = msgspec.json.decode(args.from_json.read_bytes(), type=Saved)
        return show(args, saved.params, saved.cells)
    scenarios = chosen(args.scenario, cluster=args.cluster)
    if isinstance(scenarios, str):
        print(f"livefeed compare: {scenarios}", file=sys.stderr)
        return 2
    modes = list(dict.fromkeys(args.mode or MODES))
    # One line per posted batch would bury the progress display.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    err = Console(stderr=True)
    with _servers(settings, args.cluster) as (resolved, cluster), _log_root(args.logs) as logs:
        await runtime.preflight(resolved)
        live = report.LiveProgress(err)
        with live.running():
            runs = await run_matrix(resolved, scenarios, modes, params, logs, live.cell,
                                    cluster=cluster)
    if args.json:
        sys.stdout.write(to_json(runs, params).decode() + "\n")
    return show(args, params, [r.result for r in runs], table=not args.json)


class Saved(msgspec.Struct):
    params: Params
    cells: list[CellResult]


def show(args: argparse.Namespace, params: Params, cells: list[CellResult],
         table: bool = True) -> int:
    err = Console(stderr=True)
    if table:
        out = Console()
        if not out.is_terminal:
            out = Console(width=170)
        out.print(report.table(cells))
    if args.report is not None:
        shown = {"duration": f"{params.duration:g}s", "clients": params.clients,
                 "rate": f"{params.rate:g}/s", "seed": params.seed}
        descriptions = {name: describe(name) for name in dict.fromkeys(c.scenario for c in cells)}
        args.report.write_text(report.html_report(cells, shown, descriptions))
        err.print(f"report written to {args.report}")
    return BROKEN if streams_broken(cells) else 0

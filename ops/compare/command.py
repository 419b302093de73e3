"""`livefeed compare`: run the scenario matrix in both delivery modes and show what each loses."""

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

from livefeed.core.settings import Resolved, Settings
from livefeed.ops import runtime
from livefeed.ops.commands import Subparsers
from livefeed.ops.compare import report
from livefeed.ops.compare.measure import CellResult
from livefeed.ops.compare.run import Params, run_matrix, to_json
from livefeed.ops.compare.scenarios import SCENARIOS, describe
from livefeed.schemas.frames import Delivery

MODES = get_args(Delivery)
# Exit status when a `streams` cell lost, duplicated or failed to persist an event.
BROKEN = 3


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    defaults = Params()
    p = sub.add_parser(
        "compare", parents=[parent], help="measure what Pub/Sub loses against Streams under faults",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run fault scenarios against both delivery modes, each cell on a fresh "
        "namespace (own key prefix and Postgres schema) with real gateway and consumer "
        "processes, real WebSocket clients and a load generator on POST /v1/events. Counts "
        "are made by matching event ids. Uses LIVEFEED_REDIS_URL / LIVEFEED_DATABASE_URL, "
        "else a running `livefeed up`, else starts the embedded servers.\n\nscenarios:\n"
        + "\n".join(f"  {name:<17} {SCENARIOS[name].summary}" for name in SCENARIOS)
        + f"\n\nExit status {BROKEN} if a streams cell lost, duplicated or failed to "
        "persist an event.",
    )
    p.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                   help="a scenario to run (repeat for several; default: all)")
    p.add_argument("--mode", action="append", choices=MODES,
                   help="a delivery mode (repeat; default: both)")
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
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--report", type=Path, metavar="PATH", help="write an HTML report here")
    p.add_argument("--from-json", type=Path, metavar="PATH",
                   help="run nothing: show the table (and --report) of a saved --json output")
    p.add_argument("--logs", type=Path, metavar="DIR",
                   help="keep the processes' logs here (default: a temporary directory)")
    p.set_defaults(func=compare)


@contextlib.contextmanager
def _servers(settings: Settings) -> Iterator[Resolved]:
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


def streams_broken(cells: list[CellResult]) -> bool:
    return any(
        c.mode == "streams" and not c.skipped and bool(
            c.failed or c.lost or c.duplicated or c.rows_missing or c.rows_duplicate)
        for c in cells
    )


async def compare(args: argparse.Namespace, settings: Settings) -> int:
    params = Params(duration=args.duration, clients=args.clients, rate=args.rate,
                    seed=args.seed, auth=args.auth)
    if params.clients < 2 or params.duration <= 0 or params.rate <= 0:
        print("livefeed compare: need --clients >= 2, --duration > 0 and --rate > 0",
              file=sys.stderr)
        return 2
    scenarios = [SCENARIOS[n] for n in dict.fromkeys(args.scenario or list(SCENARIOS))]
    modes = list(dict.fromkeys(args.mode or MODES))
    if args.from_json is not None:
        saved = msgspec.json.decode(args.from_json.read_bytes(), type=Saved)
        return show(args, saved.params, saved.cells)
    # One line per posted batch would bury the progress display.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    err = Console(stderr=True)
    with _servers(settings) as resolved, _log_root(args.logs) as logs:
        await runtime.preflight(resolved)
        live = report.LiveProgress(err)
        with live.running():
            runs = await run_matrix(resolved, scenarios, modes, params, logs, live.cell)
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

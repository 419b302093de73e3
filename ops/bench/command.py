"""`livefeed bench [NAME...] [--quick] [--json PATH] [--profile DIR]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import msgspec
from rich.console import Console

from livefeed.core.settings import Settings
from livefeed.ops import runtime
from livefeed.ops.bench import (
    connmem,
    e2e,
    fanout,
    flame,
    ingest,
    persist,
    procs,
    profile,
    replay,
    report,
    scaling,
    speed,
)
from livefeed.ops.bench.article import run as article_run
from livefeed.ops.bench.runner import Benchmark, Context, run_one
from livefeed.ops.commands import Subparsers

# In the order they run.
BENCHMARKS: dict[str, Benchmark] = {
    "persist": persist.run,
    "ingest": ingest.run,
    "e2e": e2e.run,
    "fanout": fanout.run,
    "replay": replay.run,
    "scaling": scaling.run,
    "article": article_run,  # the article's table: pubsub vs list vs streams
}
# Run only when named (the gateway-speed groundwork: minutes each, not part of the default run).
OPTIONAL: dict[str, Benchmark] = {
    "speed": speed.run,
    "conn-memory": connmem.run,
}


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench", parents=[parent], help="measure throughput, latency, fan-out, memory, replay",
        description="Run benchmarks against LIVEFEED_REDIS_URL / LIVEFEED_DATABASE_URL (else "
        "embedded servers started for the run), each in its own key prefix and schema, "
        "removed afterwards. Every figure is shown beside a baseline measured in the same "
        "run, as a ratio, with its goal.",
    )
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)}); "
                   f"only when named: {', '.join(OPTIONAL)}")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, under a minute: proves the benchmarks run (CI smoke)")
    p.add_argument("--json", dest="json_path", type=Path, default=None,
                   help="also write the results as JSON to this file")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="sample the gateway/consumer processes with py-spy (PATH or $PY_SPY) "
                   "into collapsed-stack files in DIR, each also as a speedscope flame graph")
    p.set_defaults(func=bench)


async def bench(args: argparse.Namespace, settings: Settings) -> int:
    names = args.names or list(BENCHMARKS)
    known = BENCHMARKS | OPTIONAL
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"livefeed bench: unknown benchmark {', '.join(unknown)}; choose from "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.profile is not None and procs.py_spy() is None:
        print("livefeed bench: --profile needs py-spy: `pip install py-spy`, or set PY_SPY to "
              "its path", file=sys.stderr)
        return 2
    console = Console(width=None if sys.stdout.isatty() else 160)
    with tempfile.TemporaryDirectory(prefix="livefeed-bench-") as tmp:
        workdir = Path(tmp)
        # Embedded servers (if any) live in the temp dir: never in a running `up`'s data dir.
        local = msgspec.structs.replace(settings, data_dir=str(workdir / "servers"))
        with runtime.embedded_servers(local) as resolved:
            await runtime.preflight(resolved)
            machine = await report.describe_machine(resolved.redis_url, resolved.database_url)
            ctx = Context(settings=resolved, quick=args.quick, workdir=workdir / "run",
                          profile_dir=args.profile)
            results = {}
            for name in names:
                console.print(f"[dim]running {name}...[/dim]")
                results[name] = await run_one(name, known[name], ctx)
            machine.load_after = os.getloadavg()
            rep = report.Report(machine=machine, quick=args.quick, benchmarks=results)
            report.render(rep, console)
            if args.profile is not None:
                console.print(f"[bold]profiles[/bold] (py-spy, in {args.profile}):")
                for line in profile.summaries(args.profile):
                    console.print(f"  {line}", highlight=False)
                flames = flame.convert(args.profile)
                console.print(f"  flame graphs: {len(flames)} *.speedscope.json files "
                              "(https://www.speedscope.app)", highlight=False)
            if args.json_path is not None:
                args.json_path.write_bytes(report.to_json(rep))
            failed = [n for n, r in results.items() if r.error]
            if failed:
                print(f"livefeed bench: failed: {', '.join(failed)}", file=sys.stderr)
                return 1
    return 0

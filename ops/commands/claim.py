"""`livefeed claim`: move a group's stale pending entries to a live consumer."""

from __future__ import annotations

import argparse

from rich.console import Console

from livefeed.core.durations import format_ms
from livefeed.core.pending import Pending, PendingError
from livefeed.core.settings import Settings
from livefeed.ops import runtime
from livefeed.ops.commands import MAX_LIMIT, Subparsers, terminal, whole
from livefeed.ops.commands.pending import pending_table
from livefeed.schemas.admin import ClaimView


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    out = terminal.json_flag()
    p = sub.add_parser(
        "claim", parents=[parent, out], help="move stale pending entries to a live consumer",
        description="XAUTOCLAIM the group's entries idle for at least --min-idle to "
        "--to (default: the most recently active consumer that owns no stale entry).",
    )
    p.add_argument("--group", required=True)
    p.add_argument("--min-idle", type=terminal.duration, required=True, metavar="DURATION",
                   help="claim entries not delivered for at least this long, e.g. 60s")
    p.add_argument("--to", metavar="CONSUMER", help="the consumer that takes them")
    p.add_argument("--limit", type=whole(1, MAX_LIMIT), default=MAX_LIMIT, help="at most this many")
    p.add_argument("--dry-run", action="store_true", help="list what would move, move nothing")
    p.set_defaults(func=claim)


async def claim(args: argparse.Namespace, settings: Settings) -> int:
    async with runtime.connect_redis(settings) as (redis, keys):
        with terminal.progress("claiming", not args.json and not args.dry_run) as update:
            try:
                view = await Pending(redis, keys).claim(
                    group=args.group, min_idle_ms=args.min_idle, to=args.to,
                    dry_run=args.dry_run, limit=args.limit, progress=update)
            except PendingError as exc:
                return terminal.fail(str(exc))
    return terminal.show(args.json, view, render_claim)


def render_claim(console: Console, view: ClaimView) -> None:
    verb = "would move" if view.dry_run else "moved"
    idle = format_ms(view.min_idle_ms)
    if view.entries:
        console.print(pending_table(f"Entries idle for {idle} or more", view.entries,
                                    "from"))
    console.print(f"{verb} {len(view.entries)} entries of group {view.group} to {view.to}")
    if view.vanished:
        console.print(f"{len(view.vanished)} pending entries had been deleted; Redis dropped "
                      f"them from the pending list: {', '.join(view.vanished)}")

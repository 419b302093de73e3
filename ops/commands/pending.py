"""`livefeed pending`: entries delivered to a consumer and not acked yet."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from livefeed.core.durations import format_ms
from livefeed.core.pending import Pending, PendingError
from livefeed.core.settings import Settings
from livefeed.ops import runtime
from livefeed.ops.commands import MAX_LIMIT, Subparsers, terminal, whole
from livefeed.schemas.admin import PendingEntry, PendingView


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    out = terminal.json_flag()
    p = sub.add_parser(
        "pending", parents=[parent, out], help="entries delivered but not acked",
        description="Pending entries, oldest first: id, owner, idle time, delivery count "
        "and a preview of the event. Durations: 250ms, 30s, 5m, 1h.",
    )
    p.add_argument("--group", help="only this group (default: all)")
    p.add_argument("--consumer", help="only entries owned by this consumer")
    p.add_argument("--min-idle", type=terminal.duration, default=0, metavar="DURATION",
                   help="only entries not delivered for at least this long")
    p.add_argument("--limit", type=whole(1, MAX_LIMIT), default=100,
                   help="at most this many (default 100)")
    p.set_defaults(func=pending)


def pending_table(title: str, entries: Sequence[PendingEntry], owner: str
                  ) -> terminal.Table:
    table = terminal.Table(title=title, title_justify="left")
    for col in ("group", "id", owner, "idle", "deliveries", "user", "preview"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(e.group, e.id, e.consumer, format_ms(e.idle_ms), str(e.deliveries),
                      e.user or "-", "(entry deleted)" if e.gone else (e.preview or ""))
    return table


async def pending(args: argparse.Namespace, settings: Settings) -> int:
    async with runtime.connect_redis(settings) as (redis, keys):
        try:
            view = await Pending(redis, keys).view(
                group=args.group, consumer=args.consumer, min_idle_ms=args.min_idle,
                limit=args.limit)
        except PendingError as exc:
            return terminal.fail(str(exc))
    return terminal.show(args.json, view, render_pending)


def render_pending(console: Console, view: PendingView) -> None:
    if not view.entries:
        console.print(f"No pending entries match ({view.total} pending in all).")
        return
    console.print(pending_table("Pending entries", view.entries, "consumer"))
    more = " (more match: raise --limit)" if view.truncated else ""
    console.print(f"{len(view.entries)} shown, {view.total} pending in all{more}")

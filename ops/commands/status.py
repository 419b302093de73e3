"""`livefeed status`: streams, consumer groups, lag, pending entries, consumers."""

from __future__ import annotations

import argparse

from rich.console import Console

from livefeed.core.durations import format_ms
from livefeed.core.settings import Settings
from livefeed.core.status import Status
from livefeed.ops import runtime
from livefeed.ops.commands import Subparsers, terminal
from livefeed.schemas.admin import StatusView


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    out = terminal.json_flag()
    p = sub.add_parser(
        "status", parents=[parent, out], help="streams, groups, lag, pending, consumers",
        description="Per stream its length and first/last ids; per consumer group its "
        "consumers, pending entries, lag (entries not delivered yet) and oldest pending age.",
    )
    p.set_defaults(func=status)


async def status(args: argparse.Namespace, settings: Settings) -> int:
    async with runtime.connect_redis(settings) as (redis, keys):
        view = await Status(redis, keys).status()
    return terminal.show(args.json, view, render_status)


def render_status(console: Console, view: StatusView) -> None:
    streams = terminal.Table(title=f"Streams (Redis {view.redis_version})",
                             title_justify="left")
    for col in ("stream", "key", "length", "first id", "last id", "groups"):
        streams.add_column(col, justify="right" if col in ("length", "groups") else "left")
    for s in [*view.streams, *view.feeds]:
        streams.add_row(s.name, s.key, str(s.length), s.first_id or "-", s.last_id or "-",
                        str(s.groups))
    console.print(streams)
    if view.feeds_more:
        console.print(f"(a sample of {len(view.feeds)} feed streams; there are more)")

    groups = terminal.Table(title="Consumer groups", title_justify="left")
    for col in ("group", "consumers", "pending", "lag", "oldest pending", "its age",
                "idle since delivery", "last delivered"):
        groups.add_column(col)
    consumers = terminal.Table(title="Consumers", title_justify="left")
    for col in ("group", "consumer", "pending", "idle"):
        consumers.add_column(col)
    for g in view.groups:
        lag = "?" if g.lag is None else f"{g.lag}{'' if g.lag_exact else '+'}"
        groups.add_row(g.name, str(len(g.consumers)), str(g.pending), lag,
                       g.oldest_pending_id or "-", format_ms(g.oldest_pending_age_ms),
                       format_ms(g.oldest_pending_idle_ms), g.last_delivered_id)
        for c in g.consumers:
            consumers.add_row(g.name, c.name, str(c.pending), format_ms(c.idle_ms))
    if view.groups:
        console.print(groups)
        console.print(consumers)
    else:
        console.print("No consumer groups yet (start `livefeed consumer persist|fanout`).")
    if view.partitions:
        console.print(partitions_table(view))


def partitions_table(view: StatusView) -> terminal.Table:
    """Per partition: its tag, stream lengths and, per group, owner, lease, pending, lag."""
    names = sorted({o.group for p in view.partitions for o in p.owners})
    table = terminal.Table(title="Partitions", title_justify="left")
    for col in ("partition", "tag", "ingest", "dead"):
        table.add_column(col, justify="right" if col in ("ingest", "dead") else "left")
    for name in names:
        table.add_column(f"{name}: owner (lease)")
        table.add_column(f"{name}: pending/lag", justify="right")
    for p in view.partitions:
        by_group = {o.group: o for o in p.owners}
        cells = [str(p.partition), p.tag, str(p.ingest_length), str(p.dead_length)]
        for name in names:
            owner = by_group.get(name)
            if owner is None:
                cells += ["-", "-"]
                continue
            lease = format_ms(owner.lease_left_ms) if owner.lease_left_ms is not None else ""
            holder = f"{owner.holder} ({lease})" if owner.holder else "unowned"
            lag = "?" if owner.lag is None else str(owner.lag)
            cells += [holder, f"{owner.pending}/{lag}"]
        table.add_row(*cells)
    return table

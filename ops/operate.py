"""Operator commands: `status`, `pending`, `claim`, `dead list|show|retry|drop`.

Readable tables by default, the same views as JSON with `--json` (the admin API's shape).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from livefeed.core import redis_client
from livefeed.core.deadletters import DeadLetters
from livefeed.core.durations import format_ms, parse_duration_ms
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.core.pending import Pending, PendingError
from livefeed.core.settings import Settings
from livefeed.core.status import Status
from livefeed.ops import runtime
from livefeed.schemas.admin import (
    ClaimView,
    DeadAction,
    DeadLetterList,
    DeadLetterView,
    PendingEntry,
    PendingView,
    StatusView,
)

_json = msgspec.json.Encoder()


def duration(text: str) -> int:
    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print the view as JSON")

    p = sub.add_parser(
        "status", parents=[parent, out], help="streams, groups, lag, pending, consumers",
        description="Per stream its length and first/last ids; per consumer group its "
        "consumers, pending entries, lag (entries not delivered yet) and oldest pending age.",
    )
    p.set_defaults(func=status)

    p = sub.add_parser(
        "pending", parents=[parent, out], help="entries delivered but not acked",
        description="Pending entries, oldest first: id, owner, idle time, delivery count "
        "and a preview of the event. Durations: 250ms, 30s, 5m, 1h.",
    )
    p.add_argument("--group", help="only this group (default: all)")
    p.add_argument("--consumer", help="only entries owned by this consumer")
    p.add_argument("--min-idle", type=duration, default=0, metavar="DURATION",
                   help="only entries not delivered for at least this long")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.set_defaults(func=pending)

    p = sub.add_parser(
        "claim", parents=[parent, out], help="move stale pending entries to a live consumer",
        description="XAUTOCLAIM the group's entries idle for at least --min-idle to "
        "--to (default: the most recently active consumer that owns no stale entry).",
    )
    p.add_argument("--group", required=True)
    p.add_argument("--min-idle", type=duration, required=True, metavar="DURATION",
                   help="claim entries not delivered for at least this long, e.g. 60s")
    p.add_argument("--to", metavar="CONSUMER", help="the consumer that takes them")
    p.add_argument("--limit", type=int, default=10_000, help="at most this many")
    p.add_argument("--dry-run", action="store_true", help="list what would move, move nothing")
    p.set_defaults(func=claim)

    dead = sub.add_parser(
        "dead", parents=[parent], help="dead letters: list, show, retry, drop",
        description="Entries a group gave up on after LIVEFEED_MAX_DELIVERIES failures.",
    )
    dsub = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    p = dsub.add_parser("list", parents=[parent, out], help="list dead letters, oldest first")
    p.add_argument("--group", help="only letters of this group")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=dead_list)
    p = dsub.add_parser("show", parents=[parent, out], help="one dead letter with its payload")
    p.add_argument("id")
    p.set_defaults(func=dead_show)
    p = dsub.add_parser(
        "retry", parents=[parent, out], help="put dead letters back into the ingest stream",
        description="Re-append each letter's original event to the ingest stream (the "
        "consumers' idempotency keeps it from doubling) and remove the letter.",
    )
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every dead letter (of --group)")
    p.add_argument("--group", help="with --all: only letters of this group")
    p.set_defaults(func=dead_retry)
    p = dsub.add_parser("drop", parents=[parent, out], help="delete dead letters for good")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every dead letter (of --group)")
    p.add_argument("--group", help="with --all: only letters of this group")
    p.add_argument("--yes", action="store_true", help="really delete (required)")
    p.set_defaults(func=dead_drop)


@contextlib.asynccontextmanager
async def _redis(settings: Settings) -> AsyncIterator[tuple[Any, Keys]]:
    settings = runtime.attach(settings)
    await runtime.preflight(settings)
    client = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster)
    try:
        yield client, Keys(settings.prefix, partitions=settings.partitions)
    finally:
        await client.aclose()


def _console() -> Console:
    return Console(width=max(Console().width, 120), highlight=False)


def _emit_json(value: object) -> None:
    sys.stdout.write(_json.encode(value).decode() + "\n")


def _fail(message: str) -> int:
    print(f"livefeed: {message}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (only on a terminal); yields `update(done, total)`."""
    console = Console(stderr=True)
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True, disable=not (enabled and console.is_terminal)) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def status(args: argparse.Namespace, settings: Settings) -> int:
    async with _redis(settings) as (redis, keys):
        view = await Status(redis, keys).status()
    if args.json:
        _emit_json(view)
    else:
        render_status(_console(), view)
    return 0


def render_status(console: Console, view: StatusView) -> None:
    streams = Table(title=f"Streams (Redis {view.redis_version})", title_justify="left")
    for col in ("stream", "key", "length", "first id", "last id", "groups"):
        streams.add_column(col, justify="right" if col in ("length", "groups") else "left")
    for s in [*view.streams, *view.feeds]:
        streams.add_row(s.name, s.key, str(s.length), s.first_id or "-", s.last_id or "-",
                        str(s.groups))
    console.print(streams)
    if view.feeds_more:
        console.print(f"(a sample of {len(view.feeds)} feed streams; there are more)")

    groups = Table(title="Consumer groups", title_justify="left")
    for col in ("group", "consumers", "pending", "lag", "oldest pending", "its age",
                "idle since delivery", "last delivered"):
        groups.add_column(col)
    consumers = Table(title="Consumers", title_justify="left")
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


def _pending_table(title: str, entries: Sequence[PendingEntry], owner: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("group", "id", owner, "idle", "deliveries", "user", "preview"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(e.group, e.id, e.consumer, format_ms(e.idle_ms), str(e.deliveries),
                      e.user or "-", "(entry deleted)" if e.gone else (e.preview or ""))
    return table


async def pending(args: argparse.Namespace, settings: Settings) -> int:
    async with _redis(settings) as (redis, keys):
        try:
            view = await Pending(redis, keys).view(
                group=args.group, consumer=args.consumer, min_idle_ms=args.min_idle,
                limit=args.limit)
        except PendingError as exc:
            return _fail(str(exc))
    if args.json:
        _emit_json(view)
    else:
        render_pending(_console(), view)
    return 0


def render_pending(console: Console, view: PendingView) -> None:
    if not view.entries:
        console.print(f"No pending entries match ({view.total} pending in all).")
        return
    console.print(_pending_table("Pending entries", view.entries, "consumer"))
    more = " (more match: raise --limit)" if view.truncated else ""
    console.print(f"{len(view.entries)} shown, {view.total} pending in all{more}")


async def claim(args: argparse.Namespace, settings: Settings) -> int:
    async with _redis(settings) as (redis, keys):
        with _progress("claiming", not args.json and not args.dry_run) as update:
            try:
                view = await Pending(redis, keys).claim(
                    group=args.group, min_idle_ms=args.min_idle, to=args.to,
                    dry_run=args.dry_run, limit=args.limit, progress=update)
            except PendingError as exc:
                return _fail(str(exc))
    if args.json:
        _emit_json(view)
    else:
        render_claim(_console(), view)
    return 0


def render_claim(console: Console, view: ClaimView) -> None:
    verb = "would move" if view.dry_run else "moved"
    idle = format_ms(view.min_idle_ms)
    if view.entries:
        console.print(_pending_table(f"Entries idle for {idle} or more", view.entries,
                                     "from"))
    console.print(f"{verb} {len(view.entries)} entries of group {view.group} to {view.to}")
    if view.vanished:
        console.print(f"{len(view.vanished)} pending entries had been deleted; Redis dropped "
                      f"them from the pending list: {', '.join(view.vanished)}")


def _dead(redis: Any, keys: Keys, settings: Settings) -> DeadLetters:
    log = EventLog(redis, keys, feed_maxlen=settings.feed_maxlen,
                   dedupe_ttl_s=settings.dedupe_ttl_s, cluster=settings.redis_cluster)
    return DeadLetters(redis, keys, log)


async def dead_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _redis(settings) as (redis, keys):
        view = await _dead(redis, keys, settings).letters(limit=args.limit, group=args.group)
    if args.json:
        _emit_json(view)
    else:
        render_dead(_console(), view)
    return 0


def render_dead(console: Console, view: DeadLetterList) -> None:
    if not view.letters:
        console.print("No dead letters.")
        return
    table = Table(title="Dead letters", title_justify="left")
    for col in ("id", "group", "error", "deliveries", "failed at", "user", "preview"):
        table.add_column(col, overflow="fold")
    for d in view.letters:
        table.add_row(d.id, d.group, d.error, str(d.deliveries), _time(d.failed_at_ms),
                      d.user or "-", d.preview or "")
    console.print(table)
    console.print(f"{len(view.letters)} shown of {view.total}")


async def dead_show(args: argparse.Namespace, settings: Settings) -> int:
    async with _redis(settings) as (redis, keys):
        letter = await _dead(redis, keys, settings).show(args.id)
    if letter is None:
        return _fail(f"no dead letter {args.id}")
    if args.json:
        _emit_json(letter)
    else:
        render_letter(_console(), letter)
    return 0


def render_letter(console: Console, d: DeadLetterView) -> None:
    table = Table(show_header=False, title=f"Dead letter {d.id}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in (("source id", d.source_id), ("group", d.group),
                        ("consumer", d.consumer), ("deliveries", str(d.deliveries)),
                        ("failed at", _time(d.failed_at_ms)), ("event id", d.event_id or "-"),
                        ("user", d.user or "-"), ("error", d.error), ("data", d.data or "")):
        table.add_row(name, value)
    console.print(table)


async def _selected(args: argparse.Namespace, dl: DeadLetters) -> list[str] | None:
    if args.all == bool(args.ids):
        return None
    return await dl.all_ids(args.group) if args.all else list(args.ids)


async def dead_retry(args: argparse.Namespace, settings: Settings) -> int:
    async with _redis(settings) as (redis, keys):
        dl = _dead(redis, keys, settings)
        ids = await _selected(args, dl)
        if ids is None:
            return _fail("name dead letter ids, or --all")
        with _progress("retrying", not args.json) as update:
            actions = await dl.retry(ids, progress=update)
    return _report(args, actions, "retried")


async def dead_drop(args: argparse.Namespace, settings: Settings) -> int:
    async with _redis(settings) as (redis, keys):
        dl = _dead(redis, keys, settings)
        ids = await _selected(args, dl)
        if ids is None:
            return _fail("name dead letter ids, or --all")
        if not args.yes:
            return _fail(f"drop deletes {len(ids)} dead letters for good; add --yes")
        with _progress("dropping", not args.json) as update:
            actions = await dl.drop(ids, progress=update)
    return _report(args, actions, "dropped")


def _report(args: argparse.Namespace, actions: list[DeadAction], done: str) -> int:
    if args.json:
        _emit_json(actions)
    else:
        console = _console()
        for a in actions:
            extra = f" -> ingest {a.ingest_id}" if a.ingest_id else ""
            reason = f": {a.reason}" if a.reason else ""
            console.print(f"{a.id}: {a.outcome}{extra}{reason}")
        ok = sum(a.outcome == done for a in actions)
        console.print(f"{ok} of {len(actions)} {done}")
    return 0 if all(a.outcome == done for a in actions) else 1

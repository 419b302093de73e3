"""`livefeed dead list|show|retry|drop`: the entries a group gave up on."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from livefeed.core.deadletters import DeadLetters
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.core.settings import Settings
from livefeed.ops import runtime
from livefeed.ops.commands import MAX_LIMIT, Subparsers, terminal, whole
from livefeed.schemas.admin import DeadAction, DeadLetterList, DeadLetterView


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    out = terminal.json_flag()
    dead = sub.add_parser(
        "dead", parents=[parent], help="dead letters: list, show, retry, drop",
        description="Entries a group gave up on after LIVEFEED_MAX_DELIVERIES failures.",
    )
    dsub = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    p = dsub.add_parser("list", parents=[parent, out], help="list dead letters, oldest first")
    p.add_argument("--group", help="only letters of this group")
    p.add_argument("--limit", type=whole(1, MAX_LIMIT), default=100)
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


def _dead(redis: Any, keys: Keys, settings: Settings) -> DeadLetters:
    log = EventLog(redis, keys, feed_maxlen=settings.feed_maxlen,
                   dedupe_ttl_s=settings.dedupe_ttl_s, cluster=settings.redis_cluster)
    return DeadLetters(redis, keys, log)


async def dead_list(args: argparse.Namespace, settings: Settings) -> int:
    async with runtime.connect_redis(settings) as (redis, keys):
        view = await _dead(redis, keys, settings).letters(limit=args.limit, group=args.group)
    return terminal.show(args.json, view, render_dead)


def render_dead(console: Console, view: DeadLetterList) -> None:
    if not view.letters:
        console.print("No dead letters.")
        return
    table = terminal.Table(title="Dead letters", title_justify="left")
    for col in ("id", "group", "error", "deliveries", "failed at", "user", "preview"):
        table.add_column(col, overflow="fold")
    for d in view.letters:
        table.add_row(d.id, d.group, d.error, str(d.deliveries), terminal.time_text(d.failed_at_ms),
                      d.user or "-", d.preview or "")
    console.print(table)
    console.print(f"{len(view.letters)} shown of {view.total}")


async def dead_show(args: argparse.Namespace, settings: Settings) -> int:
    async with runtime.connect_redis(settings) as (redis, keys):
        letter = await _dead(redis, keys, settings).show(args.id)
    if letter is None:
        return terminal.fail(f"no dead letter {args.id}")
    return terminal.show(args.json, letter, render_letter)


def render_letter(console: Console, d: DeadLetterView) -> None:
    table = terminal.Table(show_header=False, title=f"Dead letter {d.id}",
                           title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in (("source id", d.source_id), ("group", d.group),
                        ("consumer", d.consumer), ("deliveries", str(d.deliveries)),
                        ("failed at", terminal.time_text(d.failed_at_ms)),
                        ("event id", d.event_id or "-"),
                        ("user", d.user or "-"), ("error", d.error), ("data", d.data or "")):
        table.add_row(name, value)
    console.print(table)


async def _selected(args: argparse.Namespace, dl: DeadLetters) -> list[str] | None:
    if args.all == bool(args.ids):
        return None
    return await dl.all_ids(args.group) if args.all else list(args.ids)


async def dead_retry(args: argparse.Namespace, settings: Settings) -> int:
    async with runtime.connect_redis(settings) as (redis, keys):
        dl = _dead(redis, keys, settings)
        ids = await _selected(args, dl)
        if ids is None:
            return terminal.fail("name dead letter ids, or --all")
        with terminal.progress("retrying", not args.json) as update:
            actions = await dl.retry(ids, progress=update)
    return _report(args, actions, "retried")


async def dead_drop(args: argparse.Namespace, settings: Settings) -> int:
    async with runtime.connect_redis(settings) as (redis, keys):
        dl = _dead(redis, keys, settings)
        ids = await _selected(args, dl)
        if ids is None:
            return terminal.fail("name dead letter ids, or --all")
        if not args.yes:
            return terminal.fail(f"drop deletes {len(ids)} dead letters for good; add --yes")
        with terminal.progress("dropping", not args.json) as update:
            actions = await dl.drop(ids, progress=update)
    return _report(args, actions, "dropped")


def _report(args: argparse.Namespace, actions: list[DeadAction], done: str) -> int:
    if args.json:
        terminal.emit_json(actions)
    else:
        console = terminal.console()
        for a in actions:
            extra = f" -> ingest {a.ingest_id}" if a.ingest_id else ""
            reason = f": {a.reason}" if a.reason else ""
            console.print(f"{a.id}: {a.outcome}{extra}{reason}")
        ok = sum(a.outcome == done for a in actions)
        console.print(f"{ok} of {len(actions)} {done}")
    return 0 if all(a.outcome == done for a in actions) else 1

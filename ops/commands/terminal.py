"""Terminal I/O of the operator commands (`status`, `pending`, `claim`, `dead`): the
`--json` flag, JSON or rich tables on stdout, errors on stderr, progress bars, and
durations and times as typed and shown."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from livefeed.core.durations import parse_duration_ms

_json = msgspec.json.Encoder()


T = TypeVar("T")


def json_flag() -> argparse.ArgumentParser:
    """A parent parser adding `--json`."""
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print the view as JSON")
    return out


def duration(text: str) -> int:
    """An argparse type: `250ms`, `30s`, `5m`, `1h` in milliseconds."""
    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def console() -> Console:
    return Console(width=max(Console().width, 120), highlight=False)


def emit_json(value: object) -> None:
    sys.stdout.write(_json.encode(value).decode() + "\n")


def show(as_json: bool, value: T, render: Callable[[Console, T], None]) -> int:
    """`value` as JSON (`--json`) or rendered for a person; the exit status 0."""
    if as_json:
        emit_json(value)
    else:
        render(console(), value)
    return 0


def fail(message: str) -> int:
    print(f"livefeed: {message}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (only on a terminal); yields `update(done, total)`."""
    err = Console(stderr=True)
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True, disable=not (enabled and err.is_terminal)) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def time_text(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

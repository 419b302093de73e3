"""Terminal I/O of the operator commands (`status`, `pending`, `claim`, `dead`): the
`--json` flag, JSON or rich tables on stdout, errors on stderr, progress bars, and
durations and times as typed and shown.

Operator output never interprets content: newsletters are written by strangers, and a
sender of `[/oops]` or a subject with terminal escapes must print as those characters.
The console reads no markup or emoji codes, and every string printed through it or put in
a `Table` has its control characters (C0, C1, DEL, bidirectional overrides) shown as
`\\xNN` or `\\uNNNN` escapes (`visible`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import rich.table
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


# Control characters a terminal may act on, and the invisible ones that reorder text.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS.update({c: f"\\u{c:04x}" for c in (0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
                                              *range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def visible(text: str) -> str:
    """`text` with every control character as a visible escape (`\\x1b`, `\\u202e`)."""
    return text.translate(_CONTROLS)


class SafeConsole(Console):
    """A console that prints strings as they are: no markup, emoji codes or controls."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(visible(o) if isinstance(o, str) else o for o in objects), **kwargs)


class Table(rich.table.Table):
    """A rich table whose title and cells show content as it is (see `visible`)."""

    def __init__(self, *headers: Any, title: str | None = None, **kwargs: Any) -> None:
        super().__init__(*headers, title=visible(title) if title is not None else None,
                         **kwargs)

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        super().add_row(*(visible(c) if isinstance(c, str) else c for c in cells), **kwargs)


def console() -> Console:
    return SafeConsole(width=max(Console().width, 120), highlight=False, markup=False,
                       emoji=False)


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
    print(f"livefeed: {visible(message)}", file=sys.stderr)
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

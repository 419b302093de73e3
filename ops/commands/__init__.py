"""The `livefeed` subcommands, one module per command the user types.

Each module has `register(subparsers, settings)`: it adds its subcommand with `settings`
(the shared settings flags) as a parent parser and sets `func` to the handler,
`handler(args, settings)`, sync or async, returning the exit status. `ops/cli.py` lists
the `register` functions in help order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Register: TypeAlias = Callable[[Subparsers, argparse.ArgumentParser], None]


def user_id(text: str) -> str:
    """An argparse type: a user id as ingest and tokens accept it."""
    from livefeed.schemas.event import USER_ID_RULE, valid_user_id

    if not valid_user_id(text):
        raise argparse.ArgumentTypeError(f"not a valid user id: {text!r} ({USER_ID_RULE})")
    return text


# The most entries a listing or claim takes at once (as the admin API's `limit`).
MAX_LIMIT = 10_000


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in ASCII digits within `low..high` (`int` would
    take `²` or `๙`, and a huge value would fail later with a traceback)."""
    from livefeed.core.numbers import parse_int

    def parse(text: str) -> int:
        try:
            return parse_int(text, low, high, "")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = f"whole number within {low}..{high}"
    return parse


port = whole(0, 65_535)

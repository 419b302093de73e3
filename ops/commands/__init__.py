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

"""`livefeed`: one entry point for every role and operator task.

Every command reads the same settings: `LIVEFEED_*` environment variables, overridden by
the flag of the same name (`LIVEFEED_REDIS_URL` -> `--redis-url`).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from livefeed.core import settings as settings_mod
from livefeed.core.settings import Settings, SettingsError
from livefeed.ops import logredact
from livefeed.ops.bench import command as bench
from livefeed.ops.commands import (
    Register,
    Subparsers,
    claim,
    consumer,
    dead,
    gateway,
    migrate,
    openapi,
    pending,
    send,
    status,
    tokens,
    up,
)
from livefeed.ops.compare import command as compare

# Each adds its subcommand(s) to the parser; in help order.
COMMANDS: tuple[Register, ...] = (
    up.register,
    gateway.register,
    migrate.register,
    tokens.register,
    send.register,
    consumer.register,
    status.register,
    pending.register,
    claim.register,
    dead.register,
    openapi.register,
    bench.register,
    compare.register,
)

Command = Callable[[argparse.Namespace, Settings], "int | None | Awaitable[int | None]"]


class CliParser(argparse.ArgumentParser):
    """No abbreviated long options, in every parser and subparser of the CLI: with a flag for
    every setting, a command's own option is often a prefix of one (`dead retry --all` of
    `--allowed-origins`), which argparse would refuse as ambiguous, or, worse, take as the
    setting when only one matched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _settings_parent() -> argparse.ArgumentParser:
    # SUPPRESS: an absent flag sets nothing, so a nested subcommand's parser cannot
    # overwrite a flag given before it (`livefeed dead --prefix x list`).
    parent = CliParser(add_help=False)
    group = parent.add_argument_group(
        "settings", "each also read from the environment variable named in brackets"
    )
    for name in settings_mod.field_names():
        flag = settings_mod.flag_name(name)
        env = settings_mod.env_name(name)
        if name == "redis_cluster":
            group.add_argument(flag, dest=f"setting_{name}", default=argparse.SUPPRESS,
                               choices=["true", "false"], help=f"[{env}]")
        else:
            group.add_argument(flag, dest=f"setting_{name}", default=argparse.SUPPRESS,
                               metavar="VALUE", help=f"[{env}]")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="livefeed",
        description="Newsletters from webhooks to a live, gap-free feed in the browser.",
        epilog="Run `livefeed up` to start everything on embedded Redis and PostgreSQL.",
    )
    sub: Subparsers = parser.add_subparsers(  # every subparser a CliParser
        dest="command", metavar="COMMAND", required=True, parser_class=CliParser)
    parent = _settings_parent()
    for register in COMMANDS:
        register(sub, parent)
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key[len("setting_") :]: value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    return settings_mod.load(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"livefeed: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logredact.install()  # no token or ticket in any log line (uvicorn's: ops/serve.py)
    # httpx logs every request at INFO; `livefeed send` says what matters itself.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    func: Command = args.func
    try:
        if inspect.iscoroutinefunction(func):
            result = anyio.run(func, args, settings, backend_options=_loop_options())
        else:
            result = func(args, settings)
    except SettingsError as exc:
        print(f"livefeed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


def _loop_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


if __name__ == "__main__":
    sys.exit(main())

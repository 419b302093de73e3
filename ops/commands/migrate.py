"""`livefeed migrate`: create or upgrade the `newsletters` table."""

from __future__ import annotations

import argparse

from livefeed.core import db
from livefeed.core.settings import Settings
from livefeed.ops import runtime
from livefeed.ops.commands import Subparsers


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("migrate", parents=[parent], help="apply database migrations",
                       description="Create or upgrade the `newsletters` table (idempotent).")
    p.set_defaults(func=migrate)


async def migrate(args: argparse.Namespace, settings: Settings) -> int:
    settings = runtime.attach(settings)
    await runtime.preflight(settings)
    applied = await db.migrate_dsn(settings.database_url)
    print(f"applied: {', '.join(applied)}" if applied else "up to date")
    return 0

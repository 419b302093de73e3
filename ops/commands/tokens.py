"""`livefeed token`: print a signed client or admin token.

(`tokens.py`: a module named `token` would shadow the standard library's.)
"""

from __future__ import annotations

import argparse

from livefeed.core import auth
from livefeed.core.secretfile import signing_secret
from livefeed.core.settings import Settings
from livefeed.ops.commands import Subparsers, user_id


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "token", parents=[parent], help="print a signed client or admin token",
        description="Print a token signed with LIVEFEED_SECRET (or the data dir's secret) "
        "alone on stdout. Clients send it as `Authorization: Bearer <token>` (the demo and "
        "admin pages read it from their URL's fragment, #token=), never in a query string.",
    )
    p.add_argument("user", type=user_id, help="the user the token is for (its `sub`)")
    p.add_argument("--admin", action="store_true", help="an operator token for /admin and ingest")
    p.add_argument("--ttl", type=int, default=auth.DEFAULT_TTL_S, help="lifetime in seconds")
    p.set_defaults(func=token)


def token(args: argparse.Namespace, settings: Settings) -> int:
    print(auth.mint(signing_secret(settings), args.user, admin=args.admin, ttl_s=args.ttl))
    return 0

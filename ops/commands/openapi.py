"""`livefeed openapi`: print the gateway's OpenAPI 3.1 document (docs/openapi.json)."""

from __future__ import annotations

import argparse
import sys

from livefeed.core.settings import Settings
from livefeed.gateway import openapi
from livefeed.gateway.app import DEFAULT_FEATURES
from livefeed.ops.commands import Subparsers


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "openapi", parents=[parent], help="print the HTTP API's OpenAPI 3.1 document",
        description="Print the OpenAPI 3.1 document a gateway serves at /openapi.json, "
        "generated from its route declarations and msgspec bodies. docs/openapi.json is "
        "this output: `livefeed openapi > docs/openapi.json` after changing a route or body.",
    )
    p.set_defaults(func=print_document)


def print_document(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(openapi.render(openapi.document(*openapi.declared(DEFAULT_FEATURES))))
    return 0

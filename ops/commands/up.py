"""`livefeed up`: the gateway and both consumers in one process, on embedded servers
unless URLs are set."""

from __future__ import annotations

import argparse
import os
from typing import Any

import anyio

from livefeed.core import auth, db
from livefeed.core.secretfile import signing_secret
from livefeed.core.settings import Resolved, Settings
from livefeed.gateway.app import create_app
from livefeed.ops import runtime, serve
from livefeed.ops.commands import Subparsers


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "up", parents=[parent], help="run everything: gateway and consumers (embedded default)",
        description="Run the gateway, the persist and fanout consumers in one process. With "
        "no LIVEFEED_REDIS_URL / LIVEFEED_DATABASE_URL it starts a real Redis and PostgreSQL "
        "from pip packages under the data dir and says so.",
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    p.set_defaults(func=up)


def banner(settings: Resolved, url: str, embedded: list[str]) -> str:
    secret = signing_secret(settings)
    demo = auth.mint(secret, "demo")
    admin = auth.mint(secret, "admin", admin=True)
    lines = [
        "",
        "livefeed is up",
        *[f"  embedded  {what}" for what in embedded],
        f"  redis     {settings.redis_url}",
        f"  database  {settings.database_url}",
        f"  delivery  {settings.delivery}",
        "",
        f"  feed page  {url}/?token={demo}",
        f"  admin      {url}/admin?token={admin}",
        f"  metrics    {url}/metrics",
        "",
        "  send a few newsletters to the demo user:  livefeed send --user demo --count 5",
        "  Ctrl-C to stop",
        "",
    ]
    return "\n".join(lines)


async def up(args: argparse.Namespace, settings: Settings) -> int:
    embedded = [name for name, url in (("Redis", settings.redis_url),
                                       ("PostgreSQL", settings.database_url)) if url is None]
    with runtime.embedded_servers(settings) as resolved:
        await runtime.preflight(resolved)
        await db.migrate_dsn(resolved.database_url)
        url = f"http://{args.host}:{args.port}"
        notes = [f"{name} under {resolved.data_path.resolve()}" for name in embedded]
        runtime.write_runtime(resolved, runtime.Runtime(
            redis_url=resolved.redis_url, database_url=resolved.database_url,
            gateway_url=url, pid=os.getpid()))
        try:
            print(banner(resolved, url, notes), flush=True)
            stopping = anyio.Event()
            async with anyio.create_task_group() as tg:
                for role in _consumer_roles():
                    tg.start_soon(role, resolved, stopping)
                await serve.serve(create_app(resolved), host=args.host, port=args.port,
                                  log_level="info", on_stop=stopping.set,
                                  drain_timeout_s=resolved.drain_timeout_s)
                stopping.set()
        finally:
            runtime.clear_runtime(resolved)
    return 0


def _consumer_roles() -> list[Any]:
    """Consumer coroutines `up` runs beside the gateway.

    Each is `async def role(settings, stopping: anyio.Event)` and returns once it has
    drained after `stopping` is set.
    """
    from livefeed.consumers import fanout, persist

    return [persist.run, fanout.run]

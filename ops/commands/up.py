"""`livefeed up`: the gateway and both consumers in one process, on embedded servers
unless URLs are set."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

import anyio
import msgspec

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
    p.add_argument("--cluster", action="store_true",
                   help="Redis is a cluster: with no LIVEFEED_REDIS_URL, start an embedded Redis "
                   "Cluster (3 primaries, 3 replicas) instead of one server")
    p.set_defaults(func=up)


def banner(settings: Resolved, url: str, embedded: list[str], nodes: list[str] | None = None
           ) -> str:
    secret = signing_secret(settings)
    demo = auth.mint(secret, "demo")
    admin = auth.mint(secret, "admin", admin=True)
    lines = [
        "",
        "livefeed is up",
        *[f"  embedded  {what}" for what in embedded],
        f"  redis     {settings.redis_url}{' (cluster)' if settings.redis_cluster else ''}",
        *[f"  node      {node}" for node in nodes or ()],
        f"  database  {settings.database_url}",
        f"  delivery  {settings.delivery}",
        "",
        # In the fragment: a browser never sends it to a server, so no log holds it.
        f"  feed page  {url}/#token={demo}",
        f"  admin      {url}/admin#token={admin}",
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
    with contextlib.ExitStack() as stack:
        nodes: list[str] = []
        if args.cluster:
            settings, nodes = _cluster(stack, settings)
            embedded = ["Redis Cluster" if n == "Redis" else n for n in embedded]
        resolved = stack.enter_context(runtime.embedded_servers(settings))
        await runtime.preflight(resolved)
        await db.migrate_dsn(resolved.database_url)
        url = f"http://{args.host}:{args.port}"
        notes = [f"{name} under {resolved.data_path.resolve()}" for name in embedded]
        runtime.write_runtime(resolved, runtime.Runtime(
            redis_url=resolved.redis_url, database_url=resolved.database_url,
            gateway_url=url, pid=os.getpid(), redis_cluster=resolved.redis_cluster))
        try:
            print(banner(resolved, url, notes, nodes), flush=True)
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


def _cluster(stack: contextlib.ExitStack, settings: Settings) -> tuple[Settings, list[str]]:
    """`--cluster`: LIVEFEED_REDIS_URL names a cluster, or an embedded one is started under
    the data dir; returns the settings in cluster mode and a line per embedded node."""
    if settings.redis_url is not None:
        return msgspec.structs.replace(settings, redis_cluster=True), []
    from livefeed.core.embedded_cluster import EmbeddedCluster

    cluster = stack.enter_context(EmbeddedCluster(settings.data_path / "redis-cluster"))
    nodes = [f"{n.url}  {n.role():7}  pid {n.pid}  log {n.dir / 'redis.log'}"
             for n in cluster.nodes]
    return msgspec.structs.replace(settings, redis_url=cluster.cluster_url,
                                   redis_cluster=True), nodes


def _consumer_roles() -> list[Any]:
    """Consumer coroutines `up` runs beside the gateway.

    Each is `async def role(settings, stopping: anyio.Event)` and returns once it has
    drained after `stopping` is set.
    """
    from livefeed.consumers import fanout, persist

    return [persist.run, fanout.run]

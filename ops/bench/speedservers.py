"""The servers `livefeed bench speed` compares (issue 13), and their processes' cost.

Every server takes the same clients (`ops.bench.clients`: /v1/ws with an `Authorization:
Bearer <jwt>` header, a hello, then idle) and forwards what is PUBLISHed on
`<prefix>:live:{user}` to that user's sockets. A server runs in its own process (granian:
a supervisor and one worker), so RSS and CPU are summed over the process tree.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from livefeed.core.settings import Resolved
from livefeed.ops.bench import fanout, nodews, procs
from livefeed.ops.bench.runner import Context
from livefeed.ops.procs import Child

CLK_TCK = os.sysconf("SC_CLK_TCK")

# (child, port) while it runs
Starter = Callable[[Context, Resolved], contextlib.AbstractContextManager[tuple[Child, int]]]


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    start: Starter
    available: Callable[[], str | None]  # None, or why it cannot run here


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_kb(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += procs.rss_kb(p)
    return total


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process tree so far."""
    user = system = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
    return user / CLK_TCK, system / CLK_TCK


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process tree so far."""
    return sum(cpu_times(pid))


def _importable(module: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed (pip install 'livefeed[bench]')"
        return None
    return check


def _uvicorn_ws(impl: str) -> Callable[[], str | None]:
    def check() -> str | None:
        from uvicorn.config import WS_PROTOCOLS

        return None if impl in WS_PROTOCOLS else f"this uvicorn has no ws={impl!r}"
    return check


def _node() -> str | None:
    try:
        nodews.prepare()
    except nodews.Unavailable as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def _gateway(ctx: Context, s: Resolved) -> Iterator[tuple[Child, int]]:
    with procs.gateway(s, ctx.workdir, "speed-gateway") as pair:
        yield pair


def _plain(impl: str) -> Starter:
    @contextlib.contextmanager
    def start(ctx: Context, s: Resolved) -> Iterator[tuple[Child, int]]:
        with fanout.plain_server(ctx, impl, s) as pair:
            yield pair
    return start


def _module(module: str) -> Starter:
    def start(ctx: Context, s: Resolved) -> contextlib.AbstractContextManager[tuple[Child, int]]:
        return procs.baseline_server(ctx.workdir, s, module, module)
    return start


def _node_server(mode: str) -> Starter:
    def start(ctx: Context, s: Resolved) -> contextlib.AbstractContextManager[tuple[Child, int]]:
        return nodews.server(ctx.workdir, s.redis_url, s.prefix, mode)
    return start


def _always() -> str | None:
    return None


SERVERS: dict[str, Server] = {srv.key: srv for srv in (
    Server("gateway", "livefeed gateway", _gateway, _always),
    Server("raw", "raw floor: asyncio transport.write of one frame", _module("rawws"), _always),
    Server("node", "Node ws, pre-encoded frame", _node_server("prebuilt"), _node),
    Server("node-send", "Node ws, ws.send per socket", _node_server("send"), _node),
    Server("wsproto", "plain app, uvicorn wsproto", _plain("wsproto"), _always),
    Server("websockets-sansio", "plain app, uvicorn websockets-sansio",
           _plain("websockets-sansio"), _uvicorn_ws("websockets-sansio")),
    Server("granian", "plain app, granian (ASGI)", _module("granianplain"),
           _importable("granian")),
    Server("picows", "plain app on picows", _module("picowsplain"), _importable("picows")),
)}

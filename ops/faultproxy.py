"""A small TCP proxy for fault injection: cut the link to a server and restore it, while
the server itself keeps running (for other tests, or the other side of `compare`).

    async with FaultProxy.for_url(database_url) as proxy:
        dsn = proxy.url_for(database_url)  # clients connect through the proxy (TCP)
        proxy.cut()       # open connections are reset, new ones are dropped at once
        proxy.restore()   # new connections go through again
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class FaultProxy:
    """Listens on a free loopback port (or `port`) and forwards to `target_host:target_port`,
    or to the Unix socket `unix_path` (the embedded PostgreSQL listens on one only)."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1",
                 port: int = 0, unix_path: str | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.unix_path = unix_path
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.accepted = 0
        self.refused = 0

    @property
    def port(self) -> int:
        assert self._port, "start() first"
        return self._port

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def open_connections(self) -> int:
        return len(self._links)

    @classmethod
    def for_url(cls, url: str, **kw: object) -> FaultProxy:
        """A proxy to the server of `url`, over TCP or, for a PostgreSQL DSN with
        `?host=/socket/dir`, over that directory's Unix socket."""
        parts = urlsplit(url)
        socket_dir = dict(parse_qsl(parts.query)).get("host", "")
        port = parts.port or (5432 if parts.scheme.startswith("postgres") else 6379)
        if socket_dir.startswith("/"):
            return cls("", port, unix_path=f"{socket_dir}/.s.PGSQL.{port}", **kw)  # type: ignore[arg-type]
        return cls(parts.hostname or "127.0.0.1", port, **kw)  # type: ignore[arg-type]

    def url_for(self, url: str) -> str:
        """`url` (redis://, postgresql://...) pointed at the proxy's host:port instead."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
        return urlunsplit(parts._replace(netloc=f"{netloc}{self.host}:{self.port}", query=query))

    @property
    def target(self) -> str:
        return self.unix_path or f"{self.target_host}:{self.target_port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    def cut(self) -> None:
        """Reset every open connection and drop new ones until `restore()`."""
        self._cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        logger.info("fault proxy :%s -> %s cut", self._port, self.target)

    def restore(self) -> None:
        self._cut = False
        logger.info("fault proxy :%s -> %s restored", self._port, self.target)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            # The cut aborted every link, so their pumps end by themselves; cancelling them
            # instead makes asyncio's start_server callback log the CancelledError.
            links = list(self._links)
            if links:
                _, stuck = await asyncio.wait(links, timeout=2)
                for task in stuck:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*stuck, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            if self.unix_path is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
        except OSError as exc:
            logger.warning("fault proxy: target %s unreachable: %s", self.target, exc)
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._links.discard(task)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    def _observer(self, writer: asyncio.StreamWriter) -> Callable[[bytes], None] | None:
        """For subclasses: a function shown every chunk bound for `writer` (None: none)."""
        return None

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        observe = self._observer(writer)
        try:
            while data := await reader.read(_CHUNK):
                if self._cut:
                    break
                if observe is not None:
                    observe(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One direction ended: end the other too, as a real connection drop would.
            writer.transport.abort()

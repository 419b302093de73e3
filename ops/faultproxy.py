"""A small TCP proxy for fault injection: cut the link to a server and restore it, while
the server itself keeps running (for other tests, or the other side of `compare`).

    async with FaultProxy("127.0.0.1", 5432) as proxy:
        dsn = proxy.url_for(database_url)  # clients connect through the proxy
        proxy.cut()       # open connections are reset, new ones are dropped at once
        proxy.restore()   # new connections go through again
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class FaultProxy:
    """Listens on a free loopback port (or `port`) and forwards to `target_host:target_port`."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
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

    def url_for(self, url: str) -> str:
        """`url` (redis://, postgresql://...) with its host:port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{self.host}:{self.port}"))

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    def cut(self) -> None:
        """Reset every open connection and drop new ones until `restore()`."""
        self._cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        logger.info("fault proxy :%s -> %s:%s cut", self._port, self.target_host,
                    self.target_port)

    def restore(self) -> None:
        self._cut = False
        logger.info("fault proxy :%s -> %s:%s restored", self._port, self.target_host,
                    self.target_port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self.cut()
            for task in list(self._links):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._links, return_exceptions=True)
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
            up_reader, up_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError as exc:
            logger.warning("fault proxy: target %s:%s unreachable: %s", self.target_host,
                           self.target_port, exc)
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

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                if self._cut:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One direction ended: end the other too, as a real connection drop would.
            writer.transport.abort()

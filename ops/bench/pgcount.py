"""Counting PostgreSQL round trips: a TCP proxy that reads the frontend protocol.

Every process of one benchmark deployment reaches PostgreSQL through this proxy, so what
it counts is that deployment's traffic alone (the server is shared with other work, so
its global statistics are not). A round trip is a message the client then waits on: a
`Sync` (the end of an extended-protocol exchange: asyncpg's Bind/Execute of one
statement), a `Flush` (asyncpg's Parse/Describe when it prepares a statement the
connection has not seen) or a simple `Query` (BEGIN, COMMIT, the pool's reset query).
`Execute` and `Query` messages are counted apart as statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Callable, Iterator

from livefeed.ops.faultproxy import FaultProxy

# Untyped messages before the startup message: SSLRequest, GSSENCRequest, CancelRequest.
_PRE_STARTUP = {80877103, 80877104, 80877102}


class _Frontend:
    """Splits one client's byte stream into messages and counts them."""

    def __init__(self, owner: PgCounter) -> None:
        self.owner = owner
        self.buf = bytearray()
        self.started = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            if not self.started:
                if len(self.buf) < 8:
                    return
                length, code = struct.unpack("!ii", self.buf[:8])
                if len(self.buf) < length:
                    return
                del self.buf[:length]
                self.started = code not in _PRE_STARTUP
                continue
            if len(self.buf) < 5:
                return
            kind = bytes(self.buf[0:1])
            (length,) = struct.unpack("!i", self.buf[1:5])
            if len(self.buf) < 1 + length:
                return
            del self.buf[: 1 + length]
            if kind in (b"S", b"Q", b"H"):
                self.owner.round_trips += 1
            if kind in (b"E", b"Q"):
                self.owner.statements += 1


class PgCounter(FaultProxy):
    """A FaultProxy that counts the round trips and statements its clients send."""

    round_trips = 0
    statements = 0

    def _observer(self, writer: asyncio.StreamWriter) -> Callable[[bytes], None] | None:
        # What clients send (the frontend protocol); the server's answers are not read.
        return _Frontend(self).feed if self._upstream(writer) else None

    def _upstream(self, writer: asyncio.StreamWriter) -> bool:
        """Whether `writer` goes to the server: not the client's socket, which is bound to
        the proxy's own port."""
        sock = writer.get_extra_info("sockname")
        return not (isinstance(sock, tuple) and sock[1] == self.port)


@contextlib.contextmanager
def counting(url: str) -> Iterator[PgCounter]:
    """A PgCounter for `url`'s server on its own thread and event loop, so that it keeps
    forwarding while the caller blocks (the benchmarks' process helpers wait blocking)."""
    counter = PgCounter.for_url(url)
    assert isinstance(counter, PgCounter)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(counter.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="pgcount", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the counting proxy did not start")
    try:
        yield counter
    finally:
        asyncio.run_coroutine_threadsafe(counter.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

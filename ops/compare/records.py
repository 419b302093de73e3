"""What the harness observes while a cell runs: events posted, frames received, connections.

Times are seconds on the harness's monotonic clock, relative to the cell's start, so the
load generator's and the clients' timestamps compare directly.
"""

from __future__ import annotations

import msgspec


class Sent(msgspec.Struct):
    """One event the load generator posted."""

    seq: int
    event_id: str
    user: str
    t_post: float
    t_done: float | None = None
    status: int | None = None  # HTTP status; None when no response came
    accepted: bool = False


class Received(msgspec.Struct):
    """One `event` frame a client read."""

    t: float
    event_id: str
    feed_id: str
    conn: int


class Connection(msgspec.Struct):
    """One WebSocket connection of a client, from open to close."""

    gateway: str
    t_open: float
    t_ready: float | None = None
    t_closed: float | None = None
    close_code: int | None = None
    by_harness: bool = False
    recovered: int | None = None
    reset: str | None = None


class Away(msgspec.Struct):
    """A window the harness kept a client disconnected: closed at `down`, ready at `up`."""

    down: float
    up: float


class ClientLog(msgspec.Struct):
    name: str
    user: str
    received: list[Received] = msgspec.field(default_factory=list)
    connections: list[Connection] = msgspec.field(default_factory=list)
    away: list[Away] = msgspec.field(default_factory=list)


class Mark(msgspec.Struct):
    """A scenario step on the timeline (a kill, an outage, a drop)."""

    t: float
    what: str

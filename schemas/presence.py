"""`GET /v1/presence` answer: a user's live connections over all gateways."""

from __future__ import annotations

import msgspec


class PresenceView(msgspec.Struct, frozen=True):
    user: str
    connections: int  # live WebSocket and SSE connections, over all gateways
    gateways: list[str]  # the gateways holding them (`<host>-<pid>-<hex>`), sorted

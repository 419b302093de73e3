"""Resources one gateway process holds for its lifetime, reachable as `app.state.lf`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg

from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.core.settings import Resolved


@dataclass
class GatewayState:
    settings: Resolved
    keys: Keys
    redis: Any
    pool: asyncpg.Pool
    log: EventLog
    signing_secret: str
    # Set when SIGTERM arrives: live streams (WebSocket and SSE) end themselves.
    draining: anyio.Event = field(default_factory=anyio.Event)
    extras: dict[str, Any] = field(default_factory=dict)

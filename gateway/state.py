"""Resources one gateway process holds for its lifetime, reachable as `app.state.lf`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from livefeed.core import auth
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.core.settings import Resolved

if TYPE_CHECKING:
    from livefeed.gateway.hub import Hub
    from livefeed.gateway.limits import Limits
    from livefeed.gateway.metrics import StreamFigures
    from livefeed.gateway.presence import Presence
    from livefeed.gateway.sessions import Sessions


@dataclass
class GatewayState:
    settings: Resolved
    keys: Keys
    redis: Any
    pool: asyncpg.Pool
    log: EventLog
    signing_secret: str
    # Set during a rotation (LIVEFEED_SIGNING_SECRET_PREVIOUS): its tokens still verify.
    previous_secret: str | None = None
    # Set when SIGTERM arrives: live streams (WebSocket and SSE) end themselves.
    draining: anyio.Event = field(default_factory=anyio.Event)
    # Set by the lifespans of the features that hold them (None: not plugged in).
    hub: Hub | None = None  # gateway/hub.py
    sessions: Sessions | None = None  # gateway/hub.py
    stream_figures: StreamFigures | None = None  # gateway/metrics.py
    presence: Presence | None = None  # gateway/presence.py
    limits: Limits | None = None  # gateway/limits.py

    _verifier: auth.Verifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._verifier = auth.Verifier((self.signing_secret, self.previous_secret)
                                       if self.previous_secret else self.signing_secret)

    def verify(self, token: str | None) -> auth.Claims:
        """The claims of a token signed with the current or the previous secret (the last
        1,024 that verified are remembered until they expire); raises auth.InvalidToken."""
        return self._verifier(token)

    def live(self) -> tuple[Hub, Sessions]:
        """The hub and the live sessions' registry, for the WebSocket and SSE features."""
        if self.hub is None or self.sessions is None:
            raise RuntimeError("live delivery needs the hub feature (gateway.hub.FEATURE)")
        return self.hub, self.sessions

"""`GET /v1/ws?token=..&last_id=..`: live delivery over WebSocket (JSON text frames).

Close codes (`schemas.frames.CloseCode`): 4001 bad or expired token, 4008 client too slow
(it reconnects and replays), 1012 gateway draining.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from livefeed.core import auth, metrics
from livefeed.gateway.feature import Feature
from livefeed.gateway.hub import FEATURE as HUB
from livefeed.gateway.live import Out, Session
from livefeed.gateway.sessions import run_with
from livefeed.gateway.state import GatewayState
from livefeed.schemas.frames import CloseCode, FrameType, join_frames

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


class WebSocketTransport:
    __slots__ = ("websocket",)

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def send(self, kind: FrameType, feed_id: str | None, frame: bytes) -> None:
        # uvicorn's wsproto sends bytes as a binary message: a text frame needs a str.
        await self.websocket.send_text(frame.decode())

    async def send_many(self, frames: list[Out]) -> None:
        await self.websocket.send_text(join_frames([frame for _, _, frame in frames]).decode())


async def live_ws(websocket: WebSocket) -> None:
    state: GatewayState = websocket.app.state.lf
    try:
        claims = auth.verify(state.signing_secret, websocket.query_params.get("token"))
    except auth.InvalidToken:
        # Accept first: a close before the handshake reaches the client as HTTP 403, not 4001.
        await websocket.accept()
        await websocket.close(CloseCode.BAD_TOKEN, "bad or expired token")
        return
    if state.draining.is_set():
        await websocket.accept()
        await websocket.close(CloseCode.DRAINING, "gateway draining")
        return
    hub, sessions = state.live()
    session = Session(
        user=claims.user, log=state.log, hub=hub, transport=WebSocketTransport(websocket),
        last_id=websocket.query_params.get("last_id"), mode=state.settings.delivery,
        queue_size=state.settings.send_queue, coalesce=state.settings.coalesce,
    )
    # Before the handshake completes: what is published once the client sees itself
    # connected is delivered to it.
    await session.prepare()
    await websocket.accept()
    gone = False

    async def until_gone() -> None:
        nonlocal gone
        # Client messages carry nothing; reading them notices the disconnect.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
        gone = True

    metrics.CLIENTS.labels("ws").inc()
    close_code: int | None = None
    try:
        close_code = await run_with(session, sessions, until_gone)
    except (WebSocketDisconnect, OSError):
        gone = True
    finally:
        metrics.CLIENTS.labels("ws").dec()
    if not gone:
        with anyio.move_on_after(CLOSE_TIMEOUT_S), contextlib.suppress(
            WebSocketDisconnect, OSError, RuntimeError
        ):
            await websocket.close(close_code or 1000)


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/v1/ws", live_ws)]


FEATURE = Feature("ws", routes, needs=(HUB,))

"""Baseline server: a plain uvicorn + Starlette WebSocket app, nothing of livefeed's.

`python -m ops.bench.plainws --port P --ws wsproto|websockets|websockets-sansio
[--redis URL --prefix P]`. Each connection gets a hello and then idles; with `--redis`,
one pattern subscription forwards `<prefix>:live:{user}` messages to that user's
sockets, inline: the least work a fan-out can do, to compare the gateway against.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from livefeed.core.keys import Keys
from livefeed.ops.bench.baseline import live_messages, server_args

sockets: dict[str, set[WebSocket]] = {}


async def endpoint(ws: WebSocket) -> None:
    bearer = ws.headers.get("authorization", "").removeprefix("Bearer ")
    claims = jwt.decode(bearer, options={"verify_signature": False})
    user = str(claims["sub"])
    await ws.accept()
    await ws.send_text('{"type":"hello"}')
    sockets.setdefault(user, set()).add(ws)
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        sockets[user].discard(ws)


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def forward(redis_url: str, keys: Keys) -> None:
    async for user, data in live_messages(redis_url, keys):
        text = data.decode()
        for ws in list(sockets.get(user, ())):
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await ws.send_text(text)


def app(redis_url: str | None, prefix: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(forward(redis_url, Keys(prefix))) if redis_url else None
        yield
        if task is not None:
            task.cancel()

    return Starlette(routes=[WebSocketRoute("/v1/ws", endpoint), Route("/healthz", healthz)],
                     lifespan=lifespan)


def main() -> None:
    a = server_args(redis_required=False, ws="wsproto")
    config: Any = uvicorn.Config(app(a.redis, a.prefix), host="127.0.0.1", port=a.port,
                                 ws=a.ws, log_level="warning", loop="uvloop", backlog=4096)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()

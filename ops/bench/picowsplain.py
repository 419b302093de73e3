"""The plain app on picows (Cython WebSocket library, no ASGI): one server candidate of
issue 13, doing what `ops.bench.plainws` does.

`python -m livefeed.ops.bench.picowsplain --port P --redis URL --prefix P`. Each
connection on /v1/ws (`Authorization: Bearer <jwt>`, the `sub` is the user, not verified)
gets a hello and idles; one pattern subscription forwards `<prefix>:live:{user}` messages
to that user's sockets with `WSTransport.send` (picows frames each send itself); /healthz
answers plain HTTP.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from urllib.parse import urlsplit

import jwt
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from livefeed.core.keys import Keys
from livefeed.ops.bench.baseline import live_messages, server_args

sockets: dict[str, set[WSTransport]] = {}


class Client(WSListener):
    def __init__(self, user: str) -> None:
        self.user = user

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, b'{"type":"hello"}')
        sockets.setdefault(self.user, set()).add(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        sockets.get(self.user, set()).discard(transport)


def route(request: WSUpgradeRequest) -> Client | WSUpgradeResponseWithListener | None:
    target = urlsplit(request.path.decode("latin-1"))
    if target.path == "/healthz":
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_ok_response(b"ok"), None)
    if target.path != "/v1/ws":
        return None
    # picows hands the headers over as a CIMultiDict: names match case-insensitively.
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        claims = jwt.decode(token.strip() if scheme.lower() == "bearer" else "",
                            options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_error_response(HTTPStatus.FORBIDDEN), None)
    return Client(str(claims["sub"]))


async def forward(redis_url: str, keys: Keys) -> None:
    async for user, data in live_messages(redis_url, keys):
        for transport in sockets.get(user, ()):
            transport.send(WSMsgType.TEXT, data)


async def serve(port: int, redis_url: str, prefix: str) -> None:
    server = await ws_create_server(route, "127.0.0.1", port, backlog=4096)
    task = asyncio.create_task(forward(redis_url, Keys(prefix)))
    try:
        await server.serve_forever()
    finally:
        task.cancel()


def main() -> None:
    a = server_args()
    import uvloop

    uvloop.run(serve(a.port, a.redis, a.prefix))


if __name__ == "__main__":
    main()

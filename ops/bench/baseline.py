"""What the bench's baseline servers (`rawws`, `picowsplain`, `plainws`, `granianplain`)
share: their command line, and the users' live channels they forward to their sockets."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from livefeed.core import redis_client
from livefeed.core.keys import Keys


def server_args(*, redis_required: bool = True, ws: str | None = None) -> argparse.Namespace:
    """`--port P --redis URL --prefix P` (and `--ws` for the uvicorn baseline)."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis", required=redis_required, default=None)
    p.add_argument("--prefix", default="lf")
    if ws is not None:
        p.add_argument("--ws", default=ws)
    return p.parse_args()


async def live_messages(redis_url: str, keys: Keys) -> AsyncIterator[tuple[str, bytes]]:
    """(user, frame) of every message published on a user's live channel (one pattern
    subscription, as the gateway's fan-out publishes them)."""
    client = redis_client.connect(redis_url, blocking=True)
    pubsub = client.pubsub()
    await pubsub.psubscribe(keys.live_pattern)
    try:
        async for msg in pubsub.listen():
            if msg["type"] == "pmessage":
                yield keys.user_of_live(msg["channel"]), msg["data"]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis-py 8.2
        await client.aclose()

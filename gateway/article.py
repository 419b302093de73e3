"""Ingest in `list` mode (the article's design, for comparison only).

Per request one non-transactional pipeline: a `PUBLISH` of the article's `new_newsletter`
message per event on `user:<id>:newsletters`, then one `RPUSH` of the events onto the
write buffer, the List the list writer (`consumers/listwriter.py`) pops every 500 ms.
Nothing is deduplicated here: a resent event is published and pushed again; the table's
primary key keeps one row (`ON CONFLICT DO NOTHING`, so the first content stays).
"""

from __future__ import annotations

import time
from typing import Any

from livefeed.gateway.state import GatewayState
from livefeed.schemas.article import new_newsletter
from livefeed.schemas.event import Event, encode_event


async def push(state: GatewayState, events: list[Event]) -> list[tuple[str, bool]]:
    """Publish and buffer `events`; (event id, True) for each. Raises the Redis error."""
    keys = state.keys
    encoded = [encode_event(e) for e in events]
    now_ms = time.time_ns() // 1_000_000
    pipe: Any = state.redis.pipeline(transaction=False)
    for e, data in zip(events, encoded, strict=True):
        message = new_newsletter(data, now_ms)
        if state.settings.redis_cluster:  # the gateways SSUBSCRIBE on a cluster
            pipe.spublish(keys.newsletters_channel(e.user_id), message)
        else:
            pipe.publish(keys.newsletters_channel(e.user_id), message)
    pipe.rpush(keys.write_buffer, *encoded)
    await pipe.execute()
    return [(str(e.id), True) for e in events]

"""livefeed's Python client: publish events to a gateway, and subscribe to a user's feed.

    async with Publisher("https://feed.example", webhook_secret=SECRET) as pub:
        result = await pub.publish([{"user_id": "alice", "subject": "Hi", ...}])

    async for item in subscribe("https://feed.example", token, last_id=saved):
        match item:
            case Event(id=feed_id, data=data): ...   # each event once, in order
            case Reset(last_id=resume): ...          # history lost: reload from /v1/feed
"""

from livefeed.client.publish import Publisher, PublishError, PublishResult
from livefeed.client.subscribe import Event, Reset, SubscribeError, subscribe

__all__ = ["Event", "PublishError", "PublishResult", "Publisher", "Reset", "SubscribeError",
           "subscribe"]

"""The entries of livefeed's Redis streams: field names and what they carry, defined once.

- Ingest stream: one entry per accepted event with `event_id` (its idempotency key),
  `user` (whose feed it goes to) and `data` (the event JSON exactly as ingest validated
  it; consumers decode it leniently, see `schemas.event`).
- Feed stream of a user: one entry per delivered event with `data` (the same bytes).

Redis returns field names as bytes: read them with the `*_KEY` constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from livefeed.schemas.event import Event, encode_event

if TYPE_CHECKING:  # the XADD mapping redis-py takes; schemas needs no Redis at run time
    from redis.typing import EncodableT, FieldT

EVENT_ID = "event_id"
USER = "user"
DATA = "data"
INGEST_FIELDS = (EVENT_ID, USER, DATA)
FEED_DATA = DATA  # the one field of a feed entry

EVENT_ID_KEY = EVENT_ID.encode()
USER_KEY = USER.encode()
DATA_KEY = DATA.encode()
FEED_DATA_KEY = FEED_DATA.encode()


class IngestEntry(NamedTuple):
    """The fields of one ingest stream entry.

    A NamedTuple rather than a Struct: redis-py writes the fields, not msgspec, and it
    unpacks as the (event id, user, payload) triple `EventLog.append` takes.
    """

    event_id: str
    user: str
    data: bytes

    @classmethod
    def of(cls, event: Event) -> IngestEntry:
        """The entry of an event that has its id (ingest assigns one)."""
        assert event.id is not None, "ingest assigns every event an id"
        return cls(str(event.id), event.user_id, encode_event(event))

    def fields(self) -> dict[FieldT, EncodableT]:
        """The XADD field mapping."""
        return {EVENT_ID: self.event_id, USER: self.user, DATA: self.data}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_ingest(fields: Mapping[bytes, bytes]) -> IngestEntry | str:
    """The entry as read from Redis, or why it is malformed (a poison entry)."""
    try:
        event_id, user, data = fields[EVENT_ID_KEY], fields[USER_KEY], fields[DATA_KEY]
    except KeyError:
        missing = [name for name in INGEST_FIELDS if name.encode() not in fields]
        return f"malformed entry: missing field(s) {', '.join(missing)}"
    return IngestEntry(_s(event_id), _s(user), data)

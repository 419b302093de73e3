"""The event log: idempotent append to the ingest stream, fanout into per-user feed
streams with their live publish, and reading a feed back for replay.

Both writes are Lua scripts so the marker and the write happen together or not at all:
a marker without its entry would turn a retry into a silent loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from redis.exceptions import NoScriptError, ResponseError

from livefeed.core.keys import Keys

# KEYS: ingest stream, then one seen-marker per event.
# ARGV: ttl, then per event: event id, user, payload.
# Returns per event the new entry id, or false (nil) when the id was seen already.
_APPEND = """
local ttl = ARGV[1]
local out = {}
for i = 2, #KEYS do
  local a = 2 + (i - 2) * 3
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then
    out[i - 1] = redis.call('XADD', KEYS[1], '*',
      'event_id', ARGV[a], 'user', ARGV[a + 1], 'data', ARGV[a + 2])
  else
    out[i - 1] = false
  end
end
return out
"""

# KEYS: feed stream, fanned marker.  ARGV: maxlen, ttl, payload, live channel.
# Returns {feed id, 1} when appended now, {feed id, 0} when this event was fanned out before
# (a redelivered entry): the marker holds the feed id, so the publish is not repeated either.
_FAN_OUT = """
local prev = redis.call('GET', KEYS[2])
if prev then return {prev, 0} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'data', ARGV[3])
redis.call('SET', KEYS[2], id, 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[4], '{"type":"event","id":"' .. id .. '","data":' .. ARGV[3] .. '}')
return {id, 1}
"""


class Appended(NamedTuple):
    event_id: str
    stream_id: str | None  # None: a duplicate of an event accepted before


class Fanned(NamedTuple):
    feed_id: str
    new: bool


class FeedEntry(NamedTuple):
    feed_id: str
    data: bytes


ResumeProblem = Literal["trimmed", "unknown_id", "stream_lost"]

# The resume point before a feed's first entry, given to clients of an empty feed: a resume
# from it replays the whole feed, or resets if the feed lost entries from its head.
FEED_START = "0-0"


class Resume(NamedTuple):
    """The first page after a client's last id, or why that history cannot be replayed."""

    entries: list[FeedEntry]
    problem: ResumeProblem | None


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_stream_id(value: str) -> tuple[int, int] | None:
    ms, sep, seq = value.partition("-")
    if not (ms.isdigit() and (not sep or seq.isdigit())):
        return None
    return int(ms), int(seq or 0)


class EventLog:
    """Writes and reads of the ingest and feed streams of one prefix."""

    def __init__(self, redis: Any, keys: Keys, *, feed_maxlen: int, dedupe_ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.feed_maxlen = feed_maxlen
        self.dedupe_ttl_s = dedupe_ttl_s
        self._append = redis.register_script(_APPEND)
        self._fan_out = redis.register_script(_FAN_OUT)

    async def append(self, events: Sequence[tuple[str, str, bytes]]) -> list[Appended]:
        """Append (event id, user, payload) triples to the ingest stream in one round trip.

        Idempotent on event id for `dedupe_ttl_s`: a repeated id is reported, not appended.
        """
        if not events:
            return []
        keys = [self.keys.ingest] + [self.keys.seen(eid) for eid, _, _ in events]
        args: list[Any] = [self.dedupe_ttl_s]
        for eid, user, data in events:
            args += [eid, user, data]
        ids = await self._append(keys=keys, args=args)
        return [
            Appended(eid, _s(sid) if sid else None)
            for (eid, _, _), sid in zip(events, ids, strict=True)
        ]

    async def reappend(self, event_id: str, user: str, data: bytes) -> str:
        """Append again, bypassing the seen marker (`dead retry`): the marker is still set
        for an event that was accepted once; the consumers' own idempotency (ON CONFLICT,
        fanned markers) keeps the retry from doubling anything already done."""
        sid = await self.redis.xadd(
            self.keys.ingest, {"event_id": event_id, "user": user, "data": data}
        )
        return _s(sid)

    async def fan_out(self, events: Sequence[tuple[str, str, bytes]]) -> list[Fanned]:
        """XADD each (event id, user, payload) to its user's feed and PUBLISH it, pipelined.

        Idempotent per event id: a redelivered event keeps its first feed id and is not
        published again.
        """
        if not events:
            return []
        # EVALSHA directly: a Script in a pipeline costs a SCRIPT EXISTS round trip first.
        # Without the script (restart, SCRIPT FLUSH) no command ran; rerun all (idempotent).
        try:
            replies = await self._fan_out_pipeline(events)
        except NoScriptError:
            await self.redis.script_load(_FAN_OUT)
            replies = await self._fan_out_pipeline(events)
        return [Fanned(_s(fid), bool(new)) for fid, new in replies]

    async def _fan_out_pipeline(self, events: Sequence[tuple[str, str, bytes]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for eid, user, data in events:
            pipe.evalsha(self._fan_out.sha, 2, self.keys.feed(user), self.keys.fanned(user, eid),
                         self.feed_maxlen, self.dedupe_ttl_s, data, self.keys.live(user))
        return list(await pipe.execute())

    async def last_feed_id(self, user: str) -> str | None:
        """The newest feed id of `user`, or None for an empty or missing feed."""
        rows = await self.redis.xrevrange(self.keys.feed(user), count=1)
        return _s(rows[0][0]) if rows else None

    async def read_feed(self, user: str, after: str, count: int) -> list[FeedEntry]:
        """Up to `count` feed entries strictly after `after`, oldest first."""
        rows = await self.redis.xrange(self.keys.feed(user), min=f"({after}", count=count)
        return [FeedEntry(_s(fid), fields[b"data"]) for fid, fields in rows]

    async def resume(self, user: str, last_id: str, count: int) -> Resume:
        """The first page after `last_id`, or the reason the gap cannot be filled.

        The history can be replayed only if `last_id` is still in the stream: the feed is
        trimmed from its head, so once `last_id` is gone, entries after it may be gone too.
        A missing stream means the history was lost (never written or Redis lost data).
        `FEED_START` is the exception: see `_from_start`.
        """
        parsed = parse_stream_id(last_id)
        if parsed is None:
            return Resume([], "unknown_id")
        key = self.keys.feed(user)
        if parsed == (0, 0):
            return await self._from_start(key, count)
        rows = await self.redis.xrange(key, min=last_id, count=count + 1)
        if rows and _s(rows[0][0]) == last_id:
            return Resume([FeedEntry(_s(f), d[b"data"]) for f, d in rows[1:]], None)
        first = await self.redis.xrange(key, count=1)
        if not first:
            return Resume([], "stream_lost")
        oldest = parse_stream_id(_s(first[0][0]))
        assert oldest is not None
        return Resume([], "trimmed" if parsed < oldest else "unknown_id")

    async def _from_start(self, key: str, count: int) -> Resume:
        """The first page of the whole feed, if it still holds every entry ever added.

        A missing stream has nothing to replay: its client has seen nothing of it. Redis 7
        counts the entries ever added to a stream (`entries-added`) and keeps the largest
        deleted id: the head is intact only if nothing was ever removed. Redis 6.2 reports
        neither, so a resume from the start there is answered `trimmed` (the client reloads
        the history): never a silent gap.
        """
        try:
            info = await self.redis.xinfo_stream(key)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return Resume([], None)
            raise
        added = info.get("entries-added")
        deleted = info.get("max-deleted-entry-id")
        if added is None or added != info["length"] or deleted is None or _s(deleted) != "0-0":
            return Resume([], "trimmed")
        rows = await self.redis.xrange(key, count=count)
        first = info.get("first-entry")
        if rows and (not first or _s(first[0]) != _s(rows[0][0])):
            return Resume([], "trimmed")  # trimmed between the two reads
        return Resume([FeedEntry(_s(f), d[b"data"]) for f, d in rows], None)

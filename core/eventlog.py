"""The event log: idempotent append to the ingest stream, fanout into per-user feed
streams with their live publish, and reading a feed back for replay.

Both writes are Lua scripts so the marker and the write happen together or not at all:
a marker without its entry would turn a retry into a silent loss.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from redis.exceptions import NoScriptError

from livefeed.core.keys import Keys
from livefeed.core.redis_client import RedisClient, stream_rows

# KEYS: ingest stream, then one seen-marker per event.
# ARGV: ttl, then per event: event id, user, payload, content digest.
# Returns per event the new entry id, or false (nil) when the event was seen already with
# the same content; or, appending nothing, the (1-based) position of the first event whose
# (user, id) was seen with a different content, earlier or in the same call.
_APPEND = """
local ttl = ARGV[1]
local n = #KEYS - 1
local here = {}
for i = 1, n do
  local key, digest = KEYS[i + 1], ARGV[1 + i * 4]
  local known = here[key] or redis.call('GET', key)
  if known and known ~= digest then return i end
  here[key] = digest
end
local out, done = {}, {}
for i = 1, n do
  local key, a = KEYS[i + 1], 2 + (i - 1) * 4
  if not done[key] and redis.call('SET', key, ARGV[a + 3], 'NX', 'EX', ttl) then
    out[i] = redis.call('XADD', KEYS[1], '*',
      'event_id', ARGV[a], 'user', ARGV[a + 1], 'data', ARGV[a + 2])
  else
    out[i] = false
  end
  done[key] = true
end
return out
"""

# KEYS: feed stream, fanned marker.  ARGV: maxlen, ttl, payload, live channel, digest.
# Returns {feed id, 1} when appended now, {feed id, 0} when this event was fanned out before
# (a redelivered entry): the marker holds the feed id, so the publish is not repeated either.
# The marker holds "<feed id> <content digest>": another content under the same (user, id)
# is a new version accepted after the dedupe window, fanned out as a new entry. (A marker
# written before digests were kept holds the feed id alone: the same event.)
_FAN_OUT = """
local prev = redis.call('GET', KEYS[2])
if prev then
  local fid, digest = string.match(prev, '^(%S+) (%x+)$')
  if not fid then return {prev, 0} end
  if digest == ARGV[5] then return {fid, 0} end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'data', ARGV[3])
redis.call('SET', KEYS[2], id .. ' ' .. ARGV[5], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[4], '{"type":"event","id":"' .. id .. '","data":' .. ARGV[3] .. '}')
return {id, 1}
"""


class IdConflict(Exception):
    """An append named an event already seen with another content: nothing was appended."""

    def __init__(self, index: int, event_id: str, user: str, *, earlier: bool = False,
                 ) -> None:
        where = ("appears earlier in this request" if earlier
                 else "was accepted before")
        super().__init__(f"event {event_id} of user {user} {where} with different content")
        self.index = index  # of the offending event in the call
        self.event_id = event_id
        self.user = user


def content_digest(payload: bytes) -> str:
    """What a seen marker holds: enough of a hash to tell a retry from a reuse."""
    return hashlib.sha256(payload).hexdigest()[:16]


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

    def __init__(self, redis: RedisClient, keys: Keys, *, feed_maxlen: int,
                 dedupe_ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.feed_maxlen = feed_maxlen
        self.dedupe_ttl_s = dedupe_ttl_s
        self._append = redis.register_script(_APPEND)
        self._fan_out = redis.register_script(_FAN_OUT)

    async def append(self, events: Sequence[tuple[str, str, bytes]]) -> list[Appended]:
        """Append (event id, user, payload) triples to the ingest stream in one round trip.

        An event is named by (user, event id). For `dedupe_ttl_s` after its append, the
        same payload again (in this call or a later one) is reported as a duplicate and not
        appended; a different payload raises IdConflict, and then nothing is appended.
        """
        if not events:
            return []
        keys = [self.keys.ingest] + [self.keys.seen(user, eid) for eid, user, _ in events]
        args: list[Any] = [self.dedupe_ttl_s]
        for eid, user, data in events:
            args += [eid, user, data, content_digest(data)]
        ids = await self._append(keys=keys, args=args)
        if isinstance(ids, int):
            eid, user, _ = events[ids - 1]
            earlier = any((e, u) == (eid, user) for e, u, _ in events[: ids - 1])
            raise IdConflict(ids - 1, eid, user, earlier=earlier)
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

        Idempotent per (user, event id) and content: a redelivered event keeps its first
        feed id and is not published again; another content (a reuse of the id after the
        dedupe window) is a new version, appended and published.
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
                         self.feed_maxlen, self.dedupe_ttl_s, data, self.keys.live(user),
                         content_digest(data))
        return list(await pipe.execute())

    async def last_feed_id(self, user: str) -> str | None:
        """The newest feed id of `user`, or None for an empty or missing feed."""
        rows = stream_rows(await self.redis.xrevrange(self.keys.feed(user), count=1))
        return rows[0][0] if rows else None

    async def read_feed(self, user: str, after: str, count: int) -> list[FeedEntry]:
        """Up to `count` feed entries strictly after `after`, oldest first."""
        rows = stream_rows(
            await self.redis.xrange(self.keys.feed(user), min=f"({after}", count=count))
        return [FeedEntry(fid, fields[b"data"]) for fid, fields in rows]

    async def resume(self, user: str, last_id: str, count: int) -> Resume:
        """The first page after `last_id`, or the reason the gap cannot be filled.

        The history can be replayed only if `last_id` is still in the stream: the feed is
        trimmed from its head, so once `last_id` is gone, entries after it may be gone too.
        A missing stream means the history was lost (never written or Redis lost data).
        """
        parsed = parse_stream_id(last_id)
        if parsed is None:
            return Resume([], "unknown_id")
        key = self.keys.feed(user)
        rows = stream_rows(await self.redis.xrange(key, min=last_id, count=count + 1))
        if rows and rows[0][0] == last_id:
            return Resume([FeedEntry(f, d[b"data"]) for f, d in rows[1:]], None)
        first = stream_rows(await self.redis.xrange(key, count=1))
        if not first:
            return Resume([], "stream_lost")
        oldest = parse_stream_id(first[0][0])
        assert oldest is not None
        return Resume([], "trimmed" if parsed < oldest else "unknown_id")

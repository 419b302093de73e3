"""The event log: idempotent append to the partitions' ingest streams, fanout into
per-user feed streams with their live publish, and reading a feed back for replay.

Both writes are Lua scripts so the marker and the write happen together or not at all:
a marker without its entry would turn a retry into a silent loss. A script only touches
one partition's keys (one hash tag, one cluster slot); the scripts of a request or batch
go out in one pipeline, one round trip per node.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from string import Template
from typing import Any, NamedTuple, cast

import anyio
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from livefeed.core import redis_client
from livefeed.core.keys import Keys
from livefeed.core.redis_client import RedisClient, stream_rows
from livefeed.core.topology import Topology, is_topology_error
from livefeed.schemas.frames import (
    EVENT_FRAME_HEAD,
    EVENT_FRAME_MID,
    EVENT_FRAME_TAIL,
    ResumeProblem,
)
from livefeed.schemas.stream import (
    DATA,
    EVENT_ID,
    FEED_DATA,
    FEED_DATA_KEY,
    USER,
    IngestEntry,
)

logger = logging.getLogger(__name__)

TOPOLOGY_ATTEMPTS = 3
WAIT_TIMEOUT_MS = 2000


class NotReplicated(Exception):
    """The append reached fewer replicas than LIVEFEED_INGEST_REPLICAS asks for in time.
    It may still be there (a retry is answered as duplicates), but it is not acknowledged."""


# KEYS: per event its partition's ingest stream and its seen marker (on a cluster all of
# one partition: one slot; on a standalone server one call takes a whole request).
# ARGV: ttl, then per event: event id, user, payload, content digest.
# Returns per event the new entry id, or false (nil) when the event was seen already with
# the same content; or, appending nothing, the (1-based) position of the first event whose
# (user, id) was seen with a different content, earlier or in the same call.
_APPEND = Template("""
local ttl = ARGV[1]
local n = #KEYS / 2
local here = {}
for i = 1, n do
  local key, digest = KEYS[2 * i], ARGV[1 + i * 4]
  local known = here[key] or redis.call('GET', key)
  if known and known ~= digest then return i end
  here[key] = digest
end
local out, done = {}, {}
for i = 1, n do
  local key, a = KEYS[2 * i], 2 + (i - 1) * 4
  if not done[key] and redis.call('SET', key, ARGV[a + 3], 'NX', 'EX', ttl) then
    out[i] = redis.call('XADD', KEYS[2 * i - 1], '*',
      '$event_id', ARGV[a], '$user', ARGV[a + 1], '$data', ARGV[a + 2])
  else
    -- A write even for a duplicate: a WAIT after this script then also covers the first
    -- append (replication is one ordered stream), so a retried 202 is as durable.
    redis.call('EXPIRE', key, ttl)
    out[i] = false
  end
  done[key] = true
end
return out
""").substitute(event_id=EVENT_ID, user=USER, data=DATA)

# A request spanning several partitions is checked for conflicts first, in all of them, so
# a 409 appends nothing anywhere (one partition's append script checks again, atomically).
# KEYS: seen markers.  ARGV: their content digests.  The (1-based) position of the first
# conflict, or 0.
_CHECK = """
local here = {}
for i = 1, #KEYS do
  local known = here[KEYS[i]] or redis.call('GET', KEYS[i])
  if known and known ~= ARGV[i] then return i end
  here[KEYS[i]] = ARGV[i]
end
return 0
"""

# One partition's events of a batch, in order.
# KEYS: per event its feed stream, fanned marker and live channel (declared as keys so a
# cluster checks they share the slot).  ARGV: maxlen, ttl, publish command (PUBLISH on a
# standalone server, SPUBLISH on a cluster), then per event its payload and digest.
# Returns per event {feed id, 1} when appended now, {feed id, 0} when it was fanned out
# before (a redelivered entry): the marker holds "<feed id> <content digest>", so it is not
# published again. Another content under the same (user, id) is a new version accepted
# after the dedupe window, fanned out as a new entry. (A marker written before digests were
# kept holds the feed id alone: the same event.)
_FAN_OUT = Template("""
local out = {}
for i = 1, (#ARGV - 3) / 2 do
  local k = (i - 1) * 3
  local data, digest = ARGV[2 + i * 2], ARGV[3 + i * 2]
  local prev = redis.call('GET', KEYS[k + 2])
  local fid, known
  if prev then
    fid, known = string.match(prev, '^(%S+) (%x+)$$')
    if not fid then fid, known = prev, digest end
  end
  if prev and known == digest then
    out[i] = {fid, 0}
  else
    local id = redis.call('XADD', KEYS[k + 1], 'MAXLEN', '~', ARGV[1], '*', '$data', data)
    redis.call('SET', KEYS[k + 2], id .. ' ' .. digest, 'EX', ARGV[2])
    redis.call(ARGV[3], KEYS[k + 3], '$head' .. id .. '$mid' .. data .. '$tail')
    out[i] = {id, 1}
  end
end
return out
""").substitute(data=FEED_DATA, head=EVENT_FRAME_HEAD.decode(), mid=EVENT_FRAME_MID.decode(),
               tail=EVENT_FRAME_TAIL.decode())


class IdConflict(Exception):
    """An append named an event already seen with another content: nothing was appended
    (unless a conflicting event raced in between the check of all partitions and the
    append of one; then the others' events are in, and a corrected retry finds them as
    duplicates)."""

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


# One feed entry read back: (feed id, payload). A plain tuple, not a NamedTuple: building
# a NamedTuple per entry was a tenth of a replay's CPU in the gateway.
FeedEntry = tuple[str, bytes]


# The resume point before a feed's first entry, given to clients of an empty feed: a resume
# from it replays the whole feed, or resets if the feed lost entries from its head.
FEED_START = "0-0"


class Resume(NamedTuple):
    """The first page after a client's last id, or why that history cannot be replayed."""

    entries: list[FeedEntry]
    problem: ResumeProblem | None


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


# A Redis stream id as a client may send it: ASCII digits only (`int` also takes `²`,
# `๙`, full-width digits, `_` and spaces), each part an unsigned 64-bit number.
_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)
_U64 = 1 << 64


def parse_stream_id(value: str) -> tuple[int, int] | None:
    """(ms, seq) of a stream id `<ms>-<seq>` (or `<ms>`, seq 0); None for anything Redis
    would not take as one (other characters, a part past 2^64 - 1)."""
    match = _STREAM_ID.fullmatch(value)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2] or 0)
    if ms >= _U64 or seq >= _U64:
        return None
    return ms, seq


def _page_reader(redis: RedisClient) -> aioredis.Redis | None:
    """A client on `redis`'s pool whose XRANGE replies stay as Redis sent them, `[id,
    [field, value, ...]]`: redis-py turning each entry's fields into a dict was a quarter
    of a replay's CPU in the gateway. None for a cluster client (it routes by key and
    keeps its parsing)."""
    if not isinstance(redis, aioredis.Redis):
        return None
    reader = aioredis.Redis(connection_pool=redis.connection_pool)
    reader.set_response_callback("XRANGE", _as_sent)
    return reader


def _as_sent(response: Any, **kwargs: Any) -> Any:
    return response or []


def _odd_feed_data(fields: list[bytes]) -> bytes:
    """The payload of a feed entry whose fields, as Redis sent them, are not `data` alone
    (`_page` takes the usual `[data, payload]` itself)."""
    return dict(zip(fields[::2], fields[1::2], strict=True))[FEED_DATA_KEY]


class EventLog:
    """Writes and reads of the ingest and feed streams of one prefix."""

    def __init__(self, redis: RedisClient, keys: Keys, *, feed_maxlen: int, dedupe_ttl_s: int,
                 cluster: bool = False, replicas: int = 0,
                 topology: Topology | None = None) -> None:
        """`replicas`: an append counts only once this many replicas have it (WAIT)."""
        self.redis = redis
        self.keys = keys
        self.feed_maxlen = feed_maxlen
        self.dedupe_ttl_s = dedupe_ttl_s
        self.replicas = replicas
        self.topology = topology or Topology(redis, cluster=cluster,
                                             **redis_client.node_options())
        # Sharded pub/sub on a cluster: a plain PUBLISH is copied to every node.
        self.publish_command = "SPUBLISH" if cluster else "PUBLISH"
        self._append_sha = _sha(_APPEND)
        self._check_sha = _sha(_CHECK)
        self._fan_out_sha = _sha(_FAN_OUT)
        self._pages = _page_reader(redis)

    def _by_partition(self, events: Sequence[tuple[str, str, bytes]]
                      ) -> dict[int, list[int]]:
        """Indexes of `events` per script call, in order (a user's events keep theirs): per
        partition on a cluster (a script's keys must share a slot); all in one call on a
        standalone server, where a script may touch every partition's keys."""
        if not self.topology.cluster:
            return {0: list(range(len(events)))}
        parts: dict[int, list[int]] = defaultdict(list)
        for i, (_, user, _) in enumerate(events):
            parts[self.keys.partition_of(user)].append(i)
        return parts

    async def append(self, events: Sequence[tuple[str, str, bytes]]) -> list[Appended]:
        """Append (event id, user, payload) triples to their partitions' ingest streams:
        one atomic script per partition on a cluster (one pipeline per node), one for the
        whole call on a standalone server.

        An event is named by (user, event id). For `dedupe_ttl_s` after its append, the
        same payload again (in this call or a later one) is reported as a duplicate and not
        appended; a different payload raises IdConflict. If a partition fails the call
        raises; the partitions appended before are duplicates on a retry of the request.
        """
        if not events:
            return []
        parts = self._by_partition(events)
        calls: dict[int, tuple[list[str], list[Any]]] = {}
        for p, idx in parts.items():
            keys: list[str] = []
            args: list[Any] = [self.dedupe_ttl_s]
            for i in idx:
                eid, user, data = events[i]
                keys += [self.keys.ingest_of(user), self.keys.seen(user, eid)]
                args += [eid, user, data, content_digest(data)]
            calls[p] = (keys, args)
        if len(parts) > 1:
            checks = {p: (keys[1::2], args[4::4]) for p, (keys, args) in calls.items()}
            found = await self._per_node(_CHECK, self._check_sha, checks, 0)
            self._raise_conflict(events, parts, {p: int(i) for p, i in found.items()})
        replies = await self._per_node(_APPEND, self._append_sha, calls, self.replicas)
        self._raise_conflict(events, parts, {p: r for p, r in replies.items()
                                             if isinstance(r, int)})
        out: list[Appended | None] = [None] * len(events)
        for p, idx in parts.items():
            for i, sid in zip(idx, replies[p], strict=True):
                out[i] = Appended(events[i][0], _s(sid) if sid else None)
        return [a for a in out if a is not None]

    async def _per_node(self, source: str, sha: str,
                        calls: dict[int, tuple[list[str], list[Any]]], replicas: int
                        ) -> dict[int, Any]:
        """Run one script call per partition: one pipeline per node (ending in WAIT when
        `replicas`), the nodes side by side. A node that moved or failed over is looked up
        again and its partitions rerun (both scripts are idempotent)."""
        await self.topology.ready()
        done: dict[int, Any] = {}
        todo = dict(calls)
        for attempt in range(1, TOPOLOGY_ATTEMPTS + 1):
            by_node: dict[str, list[int]] = defaultdict(list)
            for p, (keys, _) in todo.items():
                by_node[self.topology.node_of(keys[0])].append(p)
            nodes = list(by_node.items())
            results: list[Any]
            if len(nodes) == 1:  # always so on a standalone server: no task for it
                node, parts = nodes[0]
                try:
                    results = [await self._run_on(node, source, sha,
                                                  [todo[p] for p in parts], replicas)]
                except Exception as exc:  # sorted out below, as gather returns it
                    results = [exc]
            else:
                results = await asyncio.gather(
                    *(self._run_on(node, source, sha, [todo[p] for p in parts], replicas)
                      for node, parts in nodes),
                    return_exceptions=True)
            stale: BaseException | None = None
            for (_, parts), result in zip(nodes, results, strict=True):
                if isinstance(result, BaseException):
                    if not is_topology_error(result) or attempt == TOPOLOGY_ATTEMPTS:
                        raise result
                    stale = result
                    continue
                done.update(zip(parts, result, strict=True))
            todo = {p: c for p, c in todo.items() if p not in done}
            if not todo:
                return done
            logger.info("append: %r; refreshing the slot map (attempt %d)", stale, attempt)
            await self.topology.refresh()
            await anyio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    async def _run_on(self, node: str, source: str, sha: str,
                      calls: Sequence[tuple[list[str], list[Any]]], replicas: int) -> list[Any]:
        # EVALSHA directly: a Script object would cost a SCRIPT EXISTS round trip first.
        client = self.topology.node_client(node)
        for loaded in (False, True):
            try:
                if len(calls) == 1 and not replicas:
                    # One call: the command itself, not a pipeline of one (~7% of an
                    # ingest request's gateway CPU with the task `_per_node` no longer makes).
                    keys, args = calls[0]
                    return [await client.evalsha(sha, len(keys), *keys, *args)]
                pipe = client.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                if replicas:
                    # WAIT covers every earlier write of this connection: the appends above,
                    # or (for duplicates) the marker refresh that follows the first append
                    # in the ordered replication stream.
                    pipe.wait(replicas, WAIT_TIMEOUT_MS)
                replies = await pipe.execute()
            except NoScriptError:
                # A restart, SCRIPT FLUSH or a promoted replica: load it, run all again.
                if loaded:
                    raise
                await client.script_load(source)
                continue
            if replicas:
                acked = int(replies.pop())
                if acked < replicas:
                    raise NotReplicated(f"{acked} of {replicas} replicas acknowledged "
                                        f"the append within {WAIT_TIMEOUT_MS} ms")
            return list(replies)
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_conflict(events: Sequence[tuple[str, str, bytes]], parts: dict[int, list[int]],
                        positions: dict[int, int]) -> None:
        """IdConflict for the earliest event a partition reported (1-based; 0: none)."""
        conflicts = [parts[p][i - 1] for p, i in positions.items() if i]
        if conflicts:
            first = min(conflicts)
            eid, user, _ = events[first]
            earlier = any((e, u) == (eid, user) for e, u, _ in events[:first])
            raise IdConflict(first, eid, user, earlier=earlier)

    async def reappend(self, event_id: str, user: str, data: bytes) -> str:
        """Append again, bypassing the seen marker (`dead retry`): the marker is still set
        for an event that was accepted once; the consumers' own idempotency (ON CONFLICT,
        fanned markers) keeps the retry from doubling anything already done."""
        sid = await self.redis.xadd(
            self.keys.ingest_of(user), IngestEntry(event_id, user, data).fields()
        )
        return _s(sid)

    async def fan_out(self, events: Sequence[tuple[str, str, bytes]]) -> list[Fanned]:
        """XADD each (event id, user, payload) to its user's feed and publish it live: one
        script per partition, all in one pipeline.

        Idempotent per (user, event id) and content: a redelivered event keeps its first
        feed id and is not published again; another content (a reuse of the id after the
        dedupe window) is a new version, appended and published.
        """
        if not events:
            return []
        parts = self._by_partition(events)
        calls: dict[int, tuple[list[str], list[Any]]] = {}
        for p, idx in parts.items():
            keys: list[str] = []
            args: list[Any] = [self.feed_maxlen, self.dedupe_ttl_s, self.publish_command]
            for i in idx:
                eid, user, data = events[i]
                keys += [self.keys.feed(user), self.keys.fanned(user, eid),
                         self.keys.live(user)]
                args += [data, content_digest(data)]
            calls[p] = (keys, args)
        replies = await self._per_node(_FAN_OUT, self._fan_out_sha, calls, 0)
        out: list[Fanned | None] = [None] * len(events)
        for p, idx in parts.items():
            for i, (fid, new) in zip(idx, replies[p], strict=True):
                out[i] = Fanned(_s(fid), bool(new))
        return [f for f in out if f is not None]

    async def last_feed_id(self, user: str) -> str | None:
        """The newest feed id of `user`, or None for an empty or missing feed."""
        rows = stream_rows(await self.redis.xrevrange(self.keys.feed(user), count=1))
        return rows[0][0] if rows else None

    async def read_feed(self, user: str, after: str, count: int) -> list[FeedEntry]:
        """Up to `count` feed entries strictly after `after`, oldest first."""
        return await self._page(self.keys.feed(user), f"({after}", count)

    async def _page(self, key: str, start: str, count: int) -> list[FeedEntry]:
        """XRANGE of a feed stream from `start`: a replay page."""
        if self._pages is None:
            rows = stream_rows(await self.redis.xrange(key, min=start, count=count))
            return [(fid, fields[FEED_DATA_KEY]) for fid, fields in rows]
        reply: list[tuple[bytes, list[bytes]]] = cast(
            Any, await self._pages.xrange(key, min=start, count=count))
        # Inline: a call per entry (a decode helper, the field lookup) costs as much again.
        return [(sid.decode(), fields[1] if len(fields) == 2 and fields[0] == FEED_DATA_KEY
                 else _odd_feed_data(fields)) for sid, fields in reply]

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
        last_id = f"{parsed[0]}-{parsed[1]}"  # as Redis writes it (`007-01` is `7-1`)
        page = await self._page(key, last_id, count + 1)
        if page and page[0][0] == last_id:
            return Resume(page[1:], None)
        first = stream_rows(await self.redis.xrange(key, count=1))
        if not first:
            return Resume([], "stream_lost")
        oldest = parse_stream_id(first[0][0])
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
        page = await self._page(key, "-", count)
        first = info.get("first-entry")
        if page and (not first or _s(first[0]) != page[0][0]):
            return Resume([], "trimmed")  # trimmed between the two reads
        return Resume(page, None)

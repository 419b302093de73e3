"""The Redis commands one consumer of one group issues on the partitions' ingest streams.

`core.groups` decides *when* (policy: batching, retries, dead letters, ownership); this
module only knows *how*, including the reply shapes that differ between Redis versions and
between a standalone server and a cluster. Dead letters themselves (format, write, read)
live in `core.deadletters`.

An entry is named by a *ref*, `<partition>/<stream id>`: stream ids are per stream, so
two partitions can hold the same id. Refs are opaque to the policy and to the handlers.

Reads: on a standalone server one XREADGROUP names every owned partition's stream and may
block; on a cluster the streams live in different slots, so each is read by its own
command, pipelined (one round trip per node), and an idle consumer polls: 1 ms after a
sweep that found entries, doubling while it finds none, up to POLL_S.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import anyio
from redis.exceptions import ResponseError
from redis.typing import KeyT, StreamIdT

from livefeed.core.keys import GROUPS, Keys
from livefeed.core.redis_client import RedisClient
from livefeed.schemas.stream import parse_ingest

logger = logging.getLogger(__name__)

POLL_S = 0.02  # cluster: the longest pause between empty sweeps of the owned partitions
POLL_MIN_S = 0.001  # ... and the first one after a sweep that found entries


class Entry(NamedTuple):
    """One ingest stream entry, as the group handlers see it."""

    id: str  # ref: <partition>/<stream id>
    event_id: str
    user: str
    data: bytes


class Raw(NamedTuple):
    """An entry as read: `fields` is empty when its payload was trimmed or deleted."""

    id: str  # ref
    fields: dict[bytes, bytes]


class Claimed(NamedTuple):
    entries: list[Raw]
    cursor: str
    deleted: list[str]  # refs Redis 7 dropped from the PEL because their payload is gone
    nil_seen: bool  # Redis 6.2: claimed entries without payload (their ids are not returned)


def _s(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ref(partition: int, stream_id: str) -> str:
    return f"{partition}/{stream_id}"


def split_ref(entry_ref: str) -> tuple[int, str]:
    partition, _, stream_id = entry_ref.partition("/")
    return int(partition), stream_id


def by_partition(refs: Iterable[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for r in refs:
        p, sid = split_ref(r)
        out[p].append(sid)
    return out


def to_entry(raw: Raw) -> Entry | str:
    """The entry, or why it is malformed (a poison entry)."""
    parsed = parse_ingest(raw.fields)
    return parsed if isinstance(parsed, str) else Entry(raw.id, *parsed)


class Batch(NamedTuple):
    """Entries as read, sorted out: refs without payload, good entries, malformed ones."""

    raws: list[Raw]
    gone: list[str]
    by_id: dict[str, Raw]  # every entry with a payload
    entries: list[Entry]
    malformed: dict[str, str]  # ref -> why
    more: bool  # the read stopped at its COUNT on some stream: more entries are waiting


def sort_batch(raws: list[Raw], more: bool = False) -> Batch:
    gone: list[str] = []
    by_id: dict[str, Raw] = {}
    entries: list[Entry] = []
    malformed: dict[str, str] = {}
    for raw in raws:
        if not raw.fields:
            gone.append(raw.id)
            continue
        by_id[raw.id] = raw
        parsed = to_entry(raw)
        if isinstance(parsed, str):
            malformed[raw.id] = parsed
        else:
            entries.append(parsed)
    return Batch(raws, gone, by_id, entries, malformed, more)


def parse_read(reply: Any, keys: Keys, counts: dict[int, int] | None = None) -> list[Raw]:
    """XREADGROUP: [[stream, [(id, fields), ...]], ...] (RESP2 list, or a RESP3 map;
    nil/[] on timeout). `counts`, when given, gets the number of entries of each partition
    that returned any."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out: list[Raw] = []
    for stream, rows in pairs:
        p = keys.partition_of_key(stream)
        if counts is not None and rows:
            counts[p] = len(rows)
        for i, fields in rows or ():
            out.append(Raw(ref(p, _s(i)),
                           fields if type(fields) is dict else dict(fields or {})))
    return out


def parse_autoclaim(reply: Sequence[Any], partition: int) -> Claimed:
    """XAUTOCLAIM: [cursor, entries] on Redis 6.2, [cursor, entries, deleted ids] on 7.

    6.2 returns a claimed entry whose payload is gone as nil (redis-py: `(None, None)`):
    it stays in our PEL, so the caller has to find and ack it.
    """
    cursor = _s(reply[0])
    entries: list[Raw] = []
    nil_seen = False
    for row in reply[1]:
        if row is None or row[0] is None:
            nil_seen = True
        else:
            entries.append(Raw(ref(partition, _s(row[0])), dict(row[1] or {})))
    deleted = [ref(partition, _s(i)) for i in reply[2]] if len(reply) > 2 and reply[2] else []
    return Claimed(entries, cursor, deleted, nil_seen)


async def answers_woken_reads_whole(redis: RedisClient) -> bool:
    """Whether the server answers a blocked XREADGROUP that new entries woke with every
    stream that has entries (Redis 7.2 and later run the command again; Valkey reports
    itself as 7.2.4): Redis 7.0 answers with the stream that woke it only. A server that
    refuses INFO is taken for the older kind: one read more, nothing missed."""
    try:
        info = await redis.info("server")
    except ResponseError:
        return False
    parts = str(info.get("redis_version", "0")).split(".")
    try:
        version = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        return False
    return version >= (7, 2)


class GroupStream:
    """Commands of consumer `consumer` in group `group` on the owned partitions.

    `redis` serves short commands; `reader` (a client without socket timeout, see
    core.redis_client) serves the blocking reads. `owned`: the partitions read; the
    runner changes it as leases come and go.
    """

    def __init__(self, redis: RedisClient, keys: Keys, group: str, consumer: str,
                 *, reader: RedisClient | None = None, cluster: bool = False,
                 owned: Iterable[int] | None = None) -> None:
        self.redis = redis
        self.reader = reader if reader is not None else redis
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.cluster = cluster
        self.owned: list[int] = sorted(owned if owned is not None else range(keys.count))
        # How many partitions had entries on the last read of new entries: XREADGROUP's
        # COUNT applies to each stream, so a read shares `count` among that many. At first
        # and after an empty read every owned partition counts as busy, so a burst that
        # lands on all of them is read as one batch, not one from each.
        self._busy = 0  # 0: unknown, every owned partition
        # Whether the last read of new entries stopped at its COUNT on some stream: more
        # entries are waiting, so the runner reads ahead instead of lingering for them.
        self.more = False
        # Whether the last read shared its COUNT among every owned partition for want of
        # knowing where entries were (the first read, and one after a partial woken one).
        self.blind = False
        # Whether the last read of new entries blocked and came back with some, from a
        # server that answers a woken XREADGROUP with the stream that woke it only (Redis
        # before 7.2): entries that landed on other partitions in the same instant (one
        # ingest request) may still wait.
        self.woke = False
        # Whether this server runs a woken XREADGROUP again in full (Redis 7.2 and later,
        # Valkey), so its answer holds every stream with entries, as any read's does; set
        # by `ensure_groups` from the server's version. (The answers cannot tell: a read
        # sent with BLOCK while entries wait comes back with every such stream at once
        # from Redis 7.0 too.) Unknown: a woken read is taken for a partial one.
        self.whole_wakes = False
        self._probed = False
        self._poll_s = POLL_MIN_S  # cluster: the next pause after an empty sweep

    def _per_stream(self, count: int) -> int:
        """COUNT for each stream of a read, so a batch holds about `count` entries: the
        batch is shared among the partitions that were busy last time (one hot partition
        still fills whole batches; when every partition is busy a read is not 16x the batch)."""
        self.blind = not self._busy and len(self.owned) > 1
        busy = min(self._busy or len(self.owned), len(self.owned))
        return max(1, -(-count // max(1, busy)))

    def _note_read(self, counts: dict[int, int], per_stream: int, woke: bool) -> None:
        """After a read of new entries: which partitions were busy, and whether any of them
        had more than the read took (a read shared among too many partitions comes back
        short of a batch while entries wait: that is `more`, not an idle group).

        A read that `woke` from blocking returns the first entries of a burst, which say
        nothing of where the rest lands: the next read counts every partition as busy."""
        self._busy = 0 if woke else len(counts)
        self.more = bool(counts) and max(counts.values()) >= per_stream

    def stream(self, partition: int) -> str:
        return self.keys.ingest(partition)

    async def ensure_groups(self, partitions: Iterable[int] | None = None) -> None:
        """Create this group and every known group (retention needs all of them) at id 0
        on each partition's stream; the first call also asks the server how it answers a
        woken read (`whole_wakes`)."""
        names = tuple(dict.fromkeys((*GROUPS, self.group)))
        parts = sorted(self.owned if partitions is None else partitions)
        if not parts:
            return
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            for group in names:
                pipe.xgroup_create(self.stream(p), group, id="0", mkstream=True)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
                raise reply
        if not self._probed and not self.cluster:  # a cluster's reads never block
            self.whole_wakes = await answers_woken_reads_whole(self.reader)
            self._probed = True

    async def read(self, cursor: str, count: int, block_ms: int | None) -> list[Raw]:
        """XREADGROUP on every owned partition: `>` for new entries (blocking up to
        `block_ms` when not None), or `0` for our own pending ones."""
        return (await self.ack_and_read((), cursor, count, block_ms))[1]

    async def ack_and_read(self, ack: Sequence[str], cursor: str, count: int,
                           block_ms: int | None) -> tuple[int, list[Raw]]:
        """XACK `ack` (refs), then read, in one round trip per node.

        Returns (entries acked, entries read). Redis runs the XACKs before the read blocks.
        """
        if not self.owned:
            # Nothing read: nothing woke us, nothing is left waiting for us.
            self.woke = self.more = False
            acked = await self.ack(ack)
            if block_ms:
                await anyio.sleep(min(block_ms / 1000, 0.5))
            return acked, []
        blocking = cursor == ">" and block_ms is not None
        if self.cluster:
            return await self._sweep(ack, cursor, count, block_ms if blocking else None)
        client = self.reader if blocking else self.redis
        streams: dict[KeyT, StreamIdT] = {self.stream(p): cursor for p in self.owned}
        per_stream = self._per_stream(count) if cursor == ">" else count
        pending = by_partition(ack)
        acks: list[Any] = []
        if not pending:
            reply = await client.xreadgroup(self.group, self.consumer, streams,
                                            count=per_stream,
                                            block=block_ms if blocking else None)
        else:
            pipe = client.pipeline(transaction=False)
            for p, ids in pending.items():
                pipe.xack(self.stream(p), self.group, *ids)
            pipe.xreadgroup(self.group, self.consumer, streams, count=per_stream,
                            block=block_ms if blocking else None)
            *acks, reply = await pipe.execute()
        counts: dict[int, int] = {}
        raws = parse_read(reply, self.keys, counts)
        if cursor == ">":
            partial = blocking and not self.whole_wakes
            self._note_read(counts, per_stream, woke=partial)
            self.woke = partial and bool(counts)
        return sum(int(a) for a in acks), raws

    async def _sweep(self, ack: Sequence[str], cursor: str, count: int,
                     block_ms: int | None) -> tuple[int, list[Raw]]:
        """Cluster: one non-blocking XREADGROUP per owned partition, pipelined (redis-py
        groups a cluster pipeline per node); while empty and `block_ms` allows, poll."""
        deadline = time.monotonic() + (block_ms or 0) / 1000
        per_stream = self._per_stream(count) if cursor == ">" else count
        acked = 0
        while True:
            pending = by_partition(ack)
            ack = ()
            pipe = self.redis.pipeline(transaction=False)
            for p, ids in pending.items():
                pipe.xack(self.stream(p), self.group, *ids)
            for p in self.owned:
                pipe.xreadgroup(self.group, self.consumer, {self.stream(p): cursor},
                                count=per_stream)
            replies = await pipe.execute()
            acked += sum(int(a) for a in replies[: len(pending)])
            counts: dict[int, int] = {}
            raws = [raw for reply in replies[len(pending):]
                    for raw in parse_read(reply, self.keys, counts)]
            if cursor == ">":
                self._note_read(counts, per_stream, woke=block_ms is not None)
            if raws:
                # Entries come in runs: the next sweep follows soon, so an entry that
                # arrives meanwhile waits about a millisecond, not POLL_S.
                self._poll_s = POLL_MIN_S
                return acked, raws
            if block_ms is None or time.monotonic() >= deadline:
                return acked, raws
            await anyio.sleep(self._poll_s)
            self._poll_s = min(self._poll_s * 2, POLL_S)

    async def read_own(self, partition: int, after: str, count: int) -> list[Raw]:
        """Our own pending entries of `partition` after stream id `after` (0: from the
        start), for a restart or a partition just taken over."""
        reply = await self.redis.xreadgroup(self.group, self.consumer,
                                            {self.stream(partition): after}, count=count)
        return parse_read(reply, self.keys)

    async def ack(self, refs: Sequence[str]) -> int:
        pending = by_partition(refs)
        if not pending:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for p, ids in pending.items():
            pipe.xack(self.stream(p), self.group, *ids)
        return sum(int(a) for a in await pipe.execute())

    async def deliveries(self, refs: Sequence[str]) -> dict[str, int]:
        """Delivery count of each ref still pending in the group (absent: not pending)."""
        if not refs:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        order = list(refs)
        for r in order:
            p, sid = split_ref(r)
            pipe.xpending_range(self.stream(p), self.group, min=sid, max=sid, count=1)
        out: dict[str, int] = {}
        for r, rows in zip(order, await pipe.execute(), strict=True):
            for row in rows:
                out[r] = int(row["times_delivered"])
        return out

    async def keepalive(self, refs: Sequence[str]) -> None:
        """Reset the idle time of our entries so no other consumer claims them.

        XCLAIM ... JUSTID does not increment the delivery counter.
        """
        pending = by_partition(refs)
        if not pending:
            return
        pipe = self.redis.pipeline(transaction=False)
        for p, ids in pending.items():
            message_ids: list[StreamIdT] = list(ids)
            pipe.xclaim(self.stream(p), self.group, self.consumer, 0, message_ids, justid=True)
        await pipe.execute()

    async def autoclaim(self, partition: int, min_idle_ms: int, start: str,
                        count: int) -> Claimed:
        reply = await self.redis.xautoclaim(
            self.stream(partition), self.group, self.consumer, min_idle_ms, start_id=start,
            count=count,
        )
        return parse_autoclaim(reply, partition)

    async def ack_vanished_own(self, partition: int, limit: int = 10_000) -> list[str]:
        """Ack our pending entries of `partition` whose payload is gone; returns their refs
        (Redis 6.2)."""
        stream = self.stream(partition)
        rows = await self.redis.xpending_range(
            stream, self.group, min="-", max="+", count=limit, consumername=self.consumer
        )
        ids = [_s(r["message_id"]) for r in rows]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.xrange(stream, min=i, max=i, count=1)
        gone = [ref(partition, i)
                for i, found in zip(ids, await pipe.execute(), strict=True) if not found]
        await self.ack(gone)
        return gone

    async def owns_pending(self, partitions: Iterable[int]) -> set[int]:
        """The partitions (of `partitions`) where this consumer still owns pending entries."""
        parts = sorted(partitions)
        if not parts:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            pipe.xpending(self.stream(p), self.group)
        out: set[int] = set()
        for p, summary in zip(parts, await pipe.execute(), strict=True):
            owned = {_s(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []}
            if owned.get(self.consumer, 0) > 0:
                out.add(p)
        return out

    async def release(self, partitions: Iterable[int] | None = None) -> bool:
        """Leave the group on every partition where we own no pending entry; True if we
        left everywhere."""
        parts = sorted(range(self.keys.count) if partitions is None else partitions)
        busy = await self.owns_pending(parts)
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            if p not in busy:
                pipe.xgroup_delconsumer(self.stream(p), self.group, self.consumer)
        try:
            await pipe.execute()
        except ResponseError as exc:  # a stream or group deleted meanwhile: nothing to leave
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
        return not busy


async def ensure_group(client: RedisClient, stream: str, group: str) -> None:
    """XGROUP CREATE ... 0 MKSTREAM; an existing group (BUSYGROUP) is fine."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        logger.info("created consumer group %s on %s", group, stream)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise

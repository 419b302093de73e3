"""The Redis commands one consumer of one group issues on the ingest stream.

`core.groups` decides *when* (policy: batching, retries, dead letters); this module
only knows *how*, including the reply shapes that differ between Redis 6.2 and 7.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.exceptions import ResponseError

from livefeed.core.keys import GROUPS, Keys
from livefeed.schemas.admin import DeadLetter
from livefeed.schemas.stream import DATA_KEY, EVENT_ID, USER, parse_ingest

logger = logging.getLogger(__name__)


class Entry(NamedTuple):
    """One ingest stream entry, as the group handlers see it."""

    id: str
    event_id: str
    user: str
    data: bytes


class Raw(NamedTuple):
    """An entry as read: `fields` is empty when its payload was trimmed or deleted."""

    id: str
    fields: dict[bytes, bytes]


class Claimed(NamedTuple):
    entries: list[Raw]
    cursor: str
    deleted: list[str]  # ids Redis 7 dropped from the PEL because their payload is gone
    nil_seen: bool  # Redis 6.2: claimed entries without payload (their ids are not returned)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def to_entry(raw: Raw) -> Entry | str:
    """The entry, or why it is malformed (a poison entry)."""
    parsed = parse_ingest(raw.fields)
    return parsed if isinstance(parsed, str) else Entry(raw.id, *parsed)


class Batch(NamedTuple):
    """Entries as read, sorted out: ids without payload, good entries, malformed ones."""

    raws: list[Raw]
    gone: list[str]
    by_id: dict[str, Raw]  # every entry with a payload
    entries: list[Entry]
    malformed: dict[str, str]  # id -> why


def sort_batch(raws: list[Raw]) -> Batch:
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
    return Batch(raws, gone, by_id, entries, malformed)


def parse_read(reply: Any) -> list[Raw]:
    """XREADGROUP on one stream: [[stream, [(id, fields), ...]]] (nil/[] on timeout)."""
    if not reply:
        return []
    _stream, rows = reply[0]
    return [Raw(_s(i), fields if type(fields) is dict else dict(fields or {}))
            for i, fields in rows]


def parse_autoclaim(reply: Sequence[Any]) -> Claimed:
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
            entries.append(Raw(_s(row[0]), dict(row[1] or {})))
    deleted = [_s(i) for i in reply[2]] if len(reply) > 2 and reply[2] else []
    return Claimed(entries, cursor, deleted, nil_seen)


def dead_letter_fields(letter: DeadLetter, extra: dict[str, str]) -> dict[str, str | int]:
    fields: dict[str, str | int] = {
        name: getattr(letter, name) for name in letter.__struct_fields__
    }
    fields.update(extra)
    return fields


class GroupStream:
    """Commands of consumer `consumer` in group `group` on the ingest stream.

    `redis` serves short commands; `reader` (a client without socket timeout, see
    core.redis_client) serves the blocking reads.
    """

    def __init__(self, redis: Any, keys: Keys, group: str, consumer: str,
                 *, reader: Any = None) -> None:
        self.redis = redis
        self.reader = reader if reader is not None else redis
        self.keys = keys
        self.stream = keys.ingest
        self.group = group
        self.consumer = consumer

    def _client(self, cursor: str, block_ms: int | None) -> Any:
        """The blocking reader for a read that blocks; otherwise the client with a socket
        timeout, so a read that should return at once cannot hang forever."""
        return self.reader if cursor == ">" and block_ms is not None else self.redis

    async def ensure_groups(self) -> None:
        """Create this group and every known group (retention needs all of them) at id 0."""
        for group in dict.fromkeys((*GROUPS, self.group)):
            await ensure_group(self.redis, self.stream, group)

    async def read(self, cursor: str, count: int, block_ms: int | None) -> list[Raw]:
        """XREADGROUP: `>` for new entries, or an id for our own pending ones after it."""
        reply = await self._client(cursor, block_ms).xreadgroup(
            self.group, self.consumer, {self.stream: cursor}, count=count,
            block=block_ms if cursor == ">" else None,
        )
        return parse_read(reply)

    async def ack_and_read(self, ack: Sequence[str], cursor: str, count: int,
                           block_ms: int | None) -> tuple[int, list[Raw]]:
        """XACK `ack`, then `read(cursor, count, block_ms)`, in one round trip.

        Returns (entries acked, entries read). Redis runs the XACK before the read blocks.
        """
        if not ack:
            return 0, await self.read(cursor, count, block_ms)
        pipe = self._client(cursor, block_ms).pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *ack)
        pipe.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count,
                        block=block_ms if cursor == ">" else None)
        acked, reply = await pipe.execute()
        return int(acked), parse_read(reply)

    async def ack(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return int(await self.redis.xack(self.stream, self.group, *ids))

    async def deliveries(self, ids: Sequence[str]) -> dict[str, int]:
        """Delivery count of each id still pending in the group (absent: not pending)."""
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.xpending_range(self.stream, self.group, min=i, max=i, count=1)
        out: dict[str, int] = {}
        for rows in await pipe.execute():
            for row in rows:
                out[_s(row["message_id"])] = int(row["times_delivered"])
        return out

    async def keepalive(self, ids: Sequence[str]) -> None:
        """Reset the idle time of our entries so no other consumer claims them.

        XCLAIM ... JUSTID does not increment the delivery counter.
        """
        if ids:
            await self.redis.xclaim(self.stream, self.group, self.consumer, 0, list(ids),
                                    justid=True)

    async def autoclaim(self, min_idle_ms: int, start: str, count: int) -> Claimed:
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_ms, start_id=start, count=count
        )
        return parse_autoclaim(reply)

    async def ack_vanished_own(self, limit: int = 10_000) -> list[str]:
        """Ack our pending entries whose payload is gone; returns their ids (Redis 6.2)."""
        rows = await self.redis.xpending_range(
            self.stream, self.group, min="-", max="+", count=limit, consumername=self.consumer
        )
        ids = [_s(r["message_id"]) for r in rows]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.xrange(self.stream, min=i, max=i, count=1)
        gone = [i for i, found in zip(ids, await pipe.execute(), strict=True) if not found]
        await self.ack(gone)
        return gone

    async def dead_letter(self, letters: Sequence[tuple[DeadLetter, dict[str, str]]]) -> None:
        """XADD each letter to the dead-letter stream and XACK its entry, in one MULTI."""
        if not letters:
            return
        pipe = self.redis.pipeline(transaction=True)
        for letter, extra in letters:
            pipe.xadd(self.keys.dead, dead_letter_fields(letter, extra))
        pipe.xack(self.stream, self.group, *[letter.source_id for letter, _ in letters])
        await pipe.execute()

    def letter(self, raw: Raw, error: str, deliveries: int) -> tuple[DeadLetter, dict[str, str]]:
        f = raw.fields
        letter = DeadLetter(
            source_id=raw.id, group=self.group, consumer=self.consumer, error=error[:2000],
            deliveries=deliveries, data=_s(f.get(DATA_KEY, b"")),
            failed_at_ms=int(time.time() * 1000),
        )
        # `dead retry` re-appends with the original event id and user.
        extra = {k: _s(f[k.encode()]) for k in (EVENT_ID, USER) if k.encode() in f}
        return letter, extra

    async def release(self) -> bool:
        """Leave the group if we own no pending entry; True if we left."""
        summary = await self.redis.xpending(self.stream, self.group)
        owned = {_s(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []}
        if owned.get(self.consumer, 0) > 0:
            return False
        await self.redis.xgroup_delconsumer(self.stream, self.group, self.consumer)
        return True


async def ensure_group(client: Any, stream: str, group: str) -> None:
    """XGROUP CREATE ... 0 MKSTREAM; an existing group (BUSYGROUP) is fine."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        logger.info("created consumer group %s on %s", group, stream)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise

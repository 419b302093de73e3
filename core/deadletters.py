"""Dead letters: the entries a group gave up on, in each partition's dead-letter stream.

Everything about them lives here: the stored format (`DeadLetter`), writing one with
the ack of its ingest entry, reading it back, and the operator's list, show, retry and
drop. The consumer runner only decides *when* an entry becomes a dead letter.

A letter goes to the dead-letter stream of its entry's partition, in one MULTI with the
ack (one slot). Operators name a letter by a ref, `<partition>/<stream id>`, and see the
partitions merged, oldest first. Each stream is bounded (`LIVEFEED_DEAD_MAXLEN`, trimmed
approximately on every write), so a flood of poison cannot fill Redis; the oldest letters
go first.

A retry appends the original payload to the ingest stream first and deletes the dead
letter after: a crash in between leaves both, and the consumers' idempotency (ON CONFLICT,
fanned markers) absorbs the second copy. The other order could lose the payload.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from redis.typing import EncodableT, FieldT

from livefeed.core.eventlog import EventLog, parse_stream_id
from livefeed.core.groupstream import ref, split_ref
from livefeed.core.keys import Keys
from livefeed.core.preview import event_head, preview
from livefeed.core.redis_client import RedisClient, stream_rows
from livefeed.schemas.admin import DeadAction, DeadLetterList, DeadLetterView

_PAGE = 500
ERROR_CHARS = 2000

Progress = Callable[[int, int], None]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An entry a group gave up on after `LIVEFEED_MAX_DELIVERIES` failed deliveries.

    Stored as the fields of one entry of the dead-letter stream; `data` is the original
    ingest payload, byte for byte, so `dead retry` re-appends exactly what was accepted,
    under the entry's own `event_id` and `user` (absent if the entry was malformed).
    """

    source_id: str  # id of the entry in the ingest stream
    group: str
    consumer: str
    error: str
    deliveries: int
    data: bytes
    failed_at_ms: int
    event_id: str | None = None
    user: str | None = None


_FIELDS = msgspec.structs.fields(DeadLetter)
# Read back tolerantly (a letter written by hand or by an older version): a field that is
# missing or does not parse takes its default, or the empty value of its type.
_EMPTY: dict[Any, Any] = {str: "", int: 0, bytes: b""}


def to_fields(letter: DeadLetter) -> dict[FieldT, EncodableT]:
    """The stream entry fields of `letter` (absent optional fields are left out)."""
    out: dict[FieldT, EncodableT] = {}
    for f in _FIELDS:
        value = getattr(letter, f.name)
        if value is not None:
            out[f.encode_name] = value
    return out


def from_fields(fields: Mapping[bytes, bytes]) -> DeadLetter:
    """A dead-letter stream entry as a `DeadLetter`; tolerant of missing or bad fields."""
    values: dict[str, Any] = {}
    for f in _FIELDS:
        raw = fields.get(f.encode_name.encode())
        fallback = f.default if f.default is not msgspec.NODEFAULT else _EMPTY[f.type]
        if raw is None:
            values[f.name] = fallback
        elif f.type is bytes:
            values[f.name] = raw
        else:
            try:
                values[f.name] = msgspec.convert(raw.decode(errors="replace"), f.type,
                                                 strict=False)
            except msgspec.ValidationError:
                values[f.name] = fallback
    return DeadLetter(**values)


def letter_of(source_id: str, entry: Mapping[bytes, bytes], *, group: str, consumer: str,
              error: str, deliveries: int) -> DeadLetter:
    """The dead letter of ingest entry `source_id` (its stream fields `entry`)."""

    def text(name: bytes) -> str | None:
        raw = entry.get(name)
        return raw.decode(errors="replace") if raw is not None else None

    return DeadLetter(
        source_id=source_id, group=group, consumer=consumer, error=error[:ERROR_CHARS],
        deliveries=deliveries, data=entry.get(b"data", b""),
        failed_at_ms=int(time.time() * 1000), event_id=text(b"event_id"), user=text(b"user"),
    )


async def bury(redis: RedisClient, keys: Keys, group: str, letters: Sequence[DeadLetter], *,
               maxlen: int) -> None:
    """XADD each letter to its partition's dead-letter stream and XACK its entry, one MULTI
    per partition (a partition's keys share one slot). `source_id` is the entry's ref.

    MAXLEN ~ `maxlen` bounds each stream: Redis trims whole nodes, so it may hold a little
    more, never fewer than `maxlen` letters.
    """
    grouped: dict[int, list[DeadLetter]] = {}
    for letter in letters:
        grouped.setdefault(split_ref(letter.source_id)[0], []).append(letter)
    for partition, part in grouped.items():
        pipe = redis.pipeline(transaction=True)
        for letter in part:
            pipe.xadd(keys.dead(partition), to_fields(letter), maxlen=maxlen, approximate=True)
        pipe.xack(keys.ingest(partition), group,
                  *[split_ref(letter.source_id)[1] for letter in part])
        await pipe.execute()


_PARTITION = re.compile(r"[0-9]{1,6}", re.ASCII)


def parse_ref(dead_ref: str, keys: Keys) -> tuple[int, str] | None:
    """(partition, stream id) of an operator's dead-letter ref, or None if malformed."""
    head, sep, sid = dead_ref.partition("/")
    # ASCII digits only, and few of them (`int` takes `²`, `๙` and 5,000-digit strings).
    if not (sep and _PARTITION.fullmatch(head) and int(head) < keys.count
            and parse_stream_id(sid) is not None):
        return None
    return int(head), sid


def view(sid: str, fields: Mapping[bytes, bytes], *, full: bool = False) -> DeadLetterView:
    """One dead-letter entry as an operator sees it; tolerant of missing fields."""
    letter = from_fields(fields)
    data = letter.data or None
    head = event_head(data)
    return DeadLetterView(
        id=sid, source_id=letter.source_id, group=letter.group, consumer=letter.consumer,
        error=letter.error, deliveries=letter.deliveries, failed_at_ms=letter.failed_at_ms,
        event_id=letter.event_id or (head.id if head else None),
        user=letter.user or (head.user_id if head else None),
        preview=preview(data),
        data=(data.decode(errors="replace") if data is not None else None) if full else None,
    )


class DeadLetters:
    """The dead-letter streams of one prefix, seen as one list."""

    def __init__(self, redis: RedisClient, keys: Keys, log: EventLog) -> None:
        self.redis = redis
        self.keys = keys
        self.log = log

    async def count(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.keys.deads:
            pipe.xlen(stream)
        return sum(int(n) for n in await pipe.execute())

    async def _rows(self, partition: int, start: str, count: int
                    ) -> list[tuple[str, Mapping[bytes, bytes]]]:
        rows = stream_rows(await self.redis.xrange(self.keys.dead(partition), min=start,
                                                   count=count))
        return [(sid, fields) for sid, fields in rows]

    async def letters(self, *, limit: int = 100, group: str | None = None,
                      after: str | None = None) -> DeadLetterList:
        """Dead letters oldest first over all partitions (optionally of one group, after a
        ref), up to `limit`."""
        cursor: tuple[int, int, int] | None = None
        if after:
            parsed = parse_ref(after, self.keys)
            if parsed is None:
                raise ValueError(f"after: {after[:80]!r} is not a dead-letter id "
                                 f"(<partition>/<stream id>, partitions 0-{self.keys.count - 1})")
            at = parse_stream_id(parsed[1])
            assert at is not None
            cursor = (at[0], at[1], parsed[0])
        found: list[tuple[tuple[int, int, int], DeadLetterView]] = []
        for partition in range(self.keys.count):
            start = "-" if cursor is None else f"{cursor[0]}-{cursor[1]}"
            taken = 0
            while taken < limit:
                rows = await self._rows(partition, start, _PAGE)
                for sid, fields in rows:
                    parsed_sid = parse_stream_id(sid)
                    assert parsed_sid is not None
                    key = (parsed_sid[0], parsed_sid[1], partition)
                    if cursor is not None and key <= cursor:
                        continue
                    if group is None or from_fields(fields).group == group:
                        found.append((key, view(ref(partition, sid), fields)))
                        taken += 1
                if len(rows) < _PAGE:
                    break
                start = f"({rows[-1][0]}"
        found.sort(key=lambda item: item[0])
        return DeadLetterList(total=await self.count(),
                              letters=[letter for _, letter in found[:limit]])

    async def _get(self, dead_ref: str) -> tuple[int, str, Mapping[bytes, bytes]] | None:
        parsed = parse_ref(dead_ref, self.keys)
        if parsed is None:
            return None
        partition, sid = parsed
        rows = await self._rows(partition, sid, 1)
        if not rows or rows[0][0] != sid:
            return None
        return partition, sid, rows[0][1]

    async def show(self, dead_ref: str) -> DeadLetterView | None:
        got = await self._get(dead_ref)
        return None if got is None else view(ref(got[0], got[1]), got[2], full=True)

    async def all_ids(self, group: str | None = None) -> list[str]:
        ids: list[str] = []
        for partition in range(self.keys.count):
            start = "-"
            while True:
                rows = await self._rows(partition, start, _PAGE)
                ids += [ref(partition, sid) for sid, f in rows
                        if group is None or from_fields(f).group == group]
                if len(rows) < _PAGE:
                    break
                start = f"({rows[-1][0]}"
        return ids

    async def retry_one(self, dead_ref: str) -> DeadAction:
        if parse_ref(dead_ref, self.keys) is None:
            return DeadAction(id=dead_ref, outcome="missing",
                              reason="not a dead-letter id (<partition>/<stream id>)")
        got = await self._get(dead_ref)
        if got is None:
            return DeadAction(id=dead_ref, outcome="missing")
        partition, sid, fields = got
        letter = from_fields(fields)
        head = event_head(letter.data or None)
        event_id = letter.event_id or (head.id if head else None)
        user = letter.user or (head.user_id if head else None)
        if head is None or not event_id or not user:
            return DeadAction(
                id=dead_ref, outcome="invalid",
                reason="the payload is not an event with id and user_id; drop it instead",
            )
        stream_id = await self.log.reappend(event_id, user, letter.data)
        await self.redis.xdel(self.keys.dead(partition), sid)
        # A ref, like every entry id operators see: `pending`, `claim` take it as it is.
        return DeadAction(id=dead_ref, outcome="retried",
                          ingest_id=ref(self.keys.partition_of(user), stream_id))

    async def retry(self, ids: Sequence[str],
                    progress: Progress | None = None) -> list[DeadAction]:
        out = []
        for i, dead_id in enumerate(ids, 1):
            out.append(await self.retry_one(dead_id))
            if progress is not None:
                progress(i, len(ids))
        return out

    async def drop(self, ids: Sequence[str],
                   progress: Progress | None = None) -> list[DeadAction]:
        out = []
        for start in range(0, len(ids), _PAGE):
            chunk = list(ids[start : start + _PAGE])
            valid = [i for i in chunk if parse_ref(i, self.keys) is not None]
            pipe = self.redis.pipeline(transaction=False)
            for dead_ref in valid:
                partition, sid = split_ref(dead_ref)
                pipe.xdel(self.keys.dead(partition), sid)
            deleted = dict(zip(valid, await pipe.execute(), strict=True)) if valid else {}
            out += [DeadAction(id=i, outcome="dropped" if deleted.get(i) else "missing")
                    for i in chunk]
            if progress is not None:
                progress(min(start + _PAGE, len(ids)), len(ids))
        return out

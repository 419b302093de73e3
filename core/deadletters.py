"""Dead letters: list, show, retry (back into the ingest stream) and drop.

A retry appends the original payload to the ingest stream first and deletes the dead
letter after: a crash in between leaves both, and the consumers' idempotency (ON CONFLICT,
fanned markers) absorbs the second copy. The other order could lose the payload.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from livefeed.core.eventlog import EventLog, parse_stream_id
from livefeed.core.keys import Keys
from livefeed.core.preview import event_head, preview
from livefeed.schemas.admin import DeadAction, DeadLetterList, DeadLetterView

_PAGE = 500

Progress = Callable[[int, int], None]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(value: bytes | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def view(sid: str, fields: dict[bytes, bytes], *, full: bool = False) -> DeadLetterView:
    """One dead-letter entry as an operator sees it; tolerant of missing fields."""
    data = fields.get(b"data")
    head = event_head(data)

    def text(name: bytes) -> str:
        raw = fields.get(name)
        return _s(raw) if raw is not None else ""

    return DeadLetterView(
        id=sid, source_id=text(b"source_id"), group=text(b"group"),
        consumer=text(b"consumer"), error=text(b"error"),
        deliveries=_int(fields.get(b"deliveries")),
        failed_at_ms=_int(fields.get(b"failed_at_ms")),
        event_id=head.id if head else None, user=head.user_id if head else None,
        preview=preview(data),
        data=(data.decode(errors="replace") if data is not None else None) if full else None,
    )


class DeadLetters:
    """The dead-letter stream of one prefix."""

    def __init__(self, redis: Any, keys: Keys, log: EventLog) -> None:
        self.redis = redis
        self.keys = keys
        self.log = log

    async def count(self) -> int:
        return int(await self.redis.xlen(self.keys.dead))

    async def letters(self, *, limit: int = 100, group: str | None = None,
                   after: str | None = None) -> DeadLetterList:
        """Dead letters oldest first (optionally of one group, after an id), up to `limit`."""
        letters: list[DeadLetterView] = []
        start = f"({after}" if after else "-"
        while len(letters) < limit:
            rows = await self.redis.xrange(self.keys.dead, min=start, count=_PAGE)
            for sid, fields in rows:
                if group is None or fields.get(b"group") == group.encode():
                    letters.append(view(_s(sid), fields))
            if len(rows) < _PAGE:
                break
            start = f"({_s(rows[-1][0])}"
        return DeadLetterList(total=await self.count(), letters=letters[:limit])

    async def show(self, dead_id: str) -> DeadLetterView | None:
        if parse_stream_id(dead_id) is None:
            return None
        rows = await self.redis.xrange(self.keys.dead, min=dead_id, max=dead_id)
        return view(_s(rows[0][0]), rows[0][1], full=True) if rows else None

    async def all_ids(self, group: str | None = None) -> list[str]:
        ids: list[str] = []
        start = "-"
        while True:
            rows = await self.redis.xrange(self.keys.dead, min=start, count=_PAGE)
            ids += [_s(sid) for sid, f in rows
                    if group is None or f.get(b"group") == group.encode()]
            if len(rows) < _PAGE:
                return ids
            start = f"({_s(rows[-1][0])}"

    async def retry_one(self, dead_id: str) -> DeadAction:
        if parse_stream_id(dead_id) is None:
            return DeadAction(id=dead_id, outcome="missing", reason="not a stream id")
        rows = await self.redis.xrange(self.keys.dead, min=dead_id, max=dead_id)
        if not rows:
            return DeadAction(id=dead_id, outcome="missing")
        fields = rows[0][1]
        data = fields.get(b"data")
        head = event_head(data)
        if data is None or head is None or not head.id or not head.user_id:
            return DeadAction(
                id=dead_id, outcome="invalid",
                reason="the payload is not an event with id and user_id; drop it instead",
            )
        ingest_id = await self.log.reappend(head.id, head.user_id, data)
        await self.redis.xdel(self.keys.dead, dead_id)
        return DeadAction(id=dead_id, outcome="retried", ingest_id=ingest_id)

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
            valid = [i for i in chunk if parse_stream_id(i) is not None]
            pipe = self.redis.pipeline(transaction=False)
            for dead_id in valid:
                pipe.xdel(self.keys.dead, dead_id)
            deleted = dict(zip(valid, await pipe.execute(), strict=True)) if valid else {}
            out += [DeadAction(id=i, outcome="dropped" if deleted.get(i) else "missing")
                    for i in chunk]
            if progress is not None:
                progress(min(start + _PAGE, len(ids)), len(ids))
        return out

"""Pending entries of the ingest stream's groups, and moving them to a consumer (claim)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livefeed.core.durations import format_ms
from livefeed.core.errors import LivefeedError
from livefeed.core.eventlog import parse_stream_id
from livefeed.core.keys import Keys
from livefeed.core.preview import preview
from livefeed.core.redis_client import RedisClient
from livefeed.core.status import group_names
from livefeed.schemas.admin import ClaimView, PendingEntry, PendingView

_PAGE = 500


class PendingError(LivefeedError, ValueError):
    """The request names something that is not there (a group, a live consumer)."""


def _s(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Pending:
    """The pending entries of one prefix's ingest stream; `claim` is its one write."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def _require_group(self, group: str) -> None:
        names = await group_names(self.redis, self.keys.ingest)
        if group not in names:
            known = ", ".join(names) or "none"
            raise PendingError(f"no group {group!r} on {self.keys.ingest} (groups: {known})")

    async def view(self, *, group: str | None = None, consumer: str | None = None,
                      min_idle_ms: int = 0, limit: int = 100) -> PendingView:
        """Pending entries oldest first, group by group, with a preview of each event."""
        if group is not None:
            await self._require_group(group)
        names = [group] if group is not None else await group_names(self.redis, self.keys.ingest)
        entries: list[PendingEntry] = []
        total = 0
        truncated = False
        for name in names:
            total += int((await self.redis.xpending(self.keys.ingest, name))["pending"])
            rows, more = await self._pending_rows(name, consumer, min_idle_ms,
                                                  limit - len(entries))
            truncated = truncated or more
            entries += await self._with_payloads(name, rows)
        return PendingView(entries=entries, total=total, truncated=truncated)

    async def _pending_rows(self, group: str, consumer: str | None, min_idle_ms: int,
                            limit: int) -> tuple[list[dict[str, Any]], bool]:
        """XPENDING (extended form) pages; True when more rows matched than `limit`."""
        rows: list[dict[str, Any]] = []
        start = "-"
        while True:
            want = min(_PAGE, limit - len(rows) + 1)
            if want <= 0:
                return rows, False
            page = await self.redis.xpending_range(
                self.keys.ingest, group, min=start, max="+", count=want,
                consumername=consumer, idle=min_idle_ms or None,
            )
            rows += page
            if len(rows) > limit:
                return rows[:limit], True
            if len(page) < want:
                return rows, False
            start = f"({_s(page[-1]['message_id'])}"

    async def _with_payloads(self, group: str,
                             rows: list[dict[str, Any]]) -> list[PendingEntry]:
        if not rows:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for row in rows:
            pipe.xrange(self.keys.ingest, min=row["message_id"], max=row["message_id"])
        found = await pipe.execute()
        out = []
        for row, hit in zip(rows, found, strict=True):
            sid = _s(row["message_id"])
            fields = hit[0][1] if hit else None
            out.append(_entry(group, sid, _s(row["consumer"]),
                              int(row["time_since_delivered"]), int(row["times_delivered"]),
                              fields))
        return out

    async def claim(self, *, group: str, min_idle_ms: int, to: str | None = None,
                    dry_run: bool = False, limit: int = 1000,
                    progress: Callable[[int, int], None] | None = None) -> ClaimView:
        """Move entries idle for `min_idle_ms` or more to consumer `to` (XAUTOCLAIM).

        `to` defaults to the group's most recently active consumer that is not itself
        stale. `dry_run` lists what XPENDING IDLE says would move, moving nothing.
        `progress(done, total)` is called after each page.
        """
        await self._require_group(group)
        rows, _ = await self._pending_rows(group, None, min_idle_ms, limit)
        candidates = await self._with_payloads(group, rows)
        if to is None:
            to = await self.live_consumer(group, min_idle_ms, {e.consumer for e in candidates})
        if dry_run:
            return ClaimView(group=group, to=to, min_idle_ms=min_idle_ms, dry_run=True,
                             entries=candidates)
        owners = {e.id: e for e in candidates}
        moved: list[PendingEntry] = []
        vanished: list[str] = []
        cursor = "0-0"
        target = len(candidates)
        nil_claimed = False
        while len(moved) < limit:
            reply = await self.redis.xautoclaim(
                self.keys.ingest, group, to, min_idle_ms, start_id=cursor,
                count=min(100, limit - len(moved)),
            )
            cursor = _s(reply[0])
            for sid_raw, fields in reply[1]:
                if sid_raw is None:
                    # Redis 6.2 claims an entry whose payload was deleted as a nil pair,
                    # keeping it pending under `to`; which ids they were is found below.
                    nil_claimed = True
                    continue
                sid = _s(sid_raw)
                before = owners.get(sid)
                moved.append(_entry(
                    group, sid, before.consumer if before else "?", 0,
                    (before.deliveries + 1) if before else 0, fields,
                ))
            # Redis 7 only: ids whose payload was deleted, dropped from the pending list.
            if len(reply) > 2:
                vanished += [_s(x) for x in reply[2]]
            if progress is not None:
                progress(len(moved) + len(vanished), max(target, len(moved) + len(vanished)))
            if cursor == "0-0":
                break
        if nil_claimed:
            moved = sorted(moved + await self._deleted_among(group, candidates, moved),
                           key=lambda e: parse_stream_id(e.id) or (0, 0))
        return ClaimView(group=group, to=to, min_idle_ms=min_idle_ms, dry_run=False,
                         entries=moved, vanished=vanished)

    async def _deleted_among(self, group: str, candidates: list[PendingEntry],
                             moved: list[PendingEntry]) -> list[PendingEntry]:
        """The candidates XAUTOCLAIM moved without a payload: no longer in the stream."""
        got = {e.id for e in moved}
        rest = [e for e in candidates if e.id not in got]
        if not rest:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for e in rest:
            pipe.xrange(self.keys.ingest, min=e.id, max=e.id, count=1)
        found = await pipe.execute()
        return [_entry(group, e.id, e.consumer, 0, e.deliveries + 1, None)
                for e, rows in zip(rest, found, strict=True) if not rows]

    async def live_consumer(self, group: str, min_idle_ms: int,
                            stale_owners: set[str]) -> str:
        """The most recently active consumer that was active within `min_idle_ms` and owns
        none of the stale entries (an owner of stale entries is stuck or dead)."""
        consumers = await self.redis.xinfo_consumers(self.keys.ingest, group)
        live = [(int(c["idle"]), _s(c["name"])) for c in consumers
                if int(c["idle"]) < min_idle_ms and _s(c["name"]) not in stale_owners]
        if not live:
            raise PendingError(
                f"group {group!r} has no consumer active within the last "
                f"{format_ms(min_idle_ms)} that is not stuck itself; name the one to take "
                "the entries with --to (a running consumer's name)"
            )
        return min(live)[1]


def _entry(group: str, sid: str, consumer: str, idle_ms: int, deliveries: int,
           fields: dict[bytes, bytes] | None) -> PendingEntry:
    if fields is None:
        return PendingEntry(id=sid, group=group, consumer=consumer, idle_ms=idle_ms,
                            deliveries=deliveries, gone=True)
    event_id = fields.get(b"event_id")
    user = fields.get(b"user")
    return PendingEntry(
        id=sid, group=group, consumer=consumer, idle_ms=idle_ms, deliveries=deliveries,
        event_id=_s(event_id) if event_id is not None else None,
        user=_s(user) if user is not None else None,
        preview=preview(fields.get(b"data")),
    )

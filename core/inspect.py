"""The read side of operating livefeed: streams, groups, pending entries, and claims.

Used by the operator CLI and the admin API alike. Works on Redis 6.2, whose XINFO GROUPS
has no `lag` (it is counted here), and on Redis 7 (whose `lag` is nil after deletions
inside the group's range, counted the same way then).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from livefeed.core.eventlog import parse_stream_id
from livefeed.core.keys import Keys
from livefeed.schemas.admin import (
    ClaimView,
    ConsumerView,
    GroupView,
    PendingEntry,
    PendingView,
    StatusView,
    StreamView,
)
from livefeed.schemas.stream import DATA_KEY, EVENT_ID_KEY, USER_KEY

# Counting lag by XRANGE reads the entries; past this many the count is a lower bound.
LAG_COUNT_CAP = 10_000
_PAGE = 500
PREVIEW_CHARS = 72
FEED_SAMPLE = 10


class InspectError(ValueError):
    """The request names something that is not there (a group, a consumer)."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """`250ms`, `30s`, `5m`, `1h`, `2d` (a bare number is seconds) as milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use e.g. 250ms, 30s, 5m, 1h")
    number, unit = match.groups()
    return int(float(number) * _UNIT_MS[unit or "s"])


def format_ms(ms: int | None) -> str:
    """A short human duration: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, s_ = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s_:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class _Head(msgspec.Struct):
    """The parts of an event a preview shows; anything else in the payload is ignored."""

    id: str | None = None
    user_id: str | None = None
    subject: str | None = None
    sender: str | None = None


_head_decoder = msgspec.json.Decoder(_Head)


def event_head(data: bytes | str | None) -> _Head | None:
    if data is None:
        return None
    try:
        return _head_decoder.decode(data)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None


def preview(data: bytes | str | None) -> str | None:
    """`sender: subject` of an event payload, or the start of it if it is not an event."""
    if data is None:
        return None
    head = event_head(data)
    if head is not None and head.subject is not None:
        text = f"{head.sender}: {head.subject}" if head.sender else head.subject
    else:
        text = _s(data) if isinstance(data, str) else data.decode(errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


class Inspector:
    """Read-mostly views of one prefix's streams; `claim` is its one write."""

    def __init__(self, redis: Any, keys: Keys, *, feed_sample: int = FEED_SAMPLE) -> None:
        self.redis = redis
        self.keys = keys
        self.feed_sample = feed_sample

    async def now_ms(self) -> int:
        """Redis' clock: ids and idle times are Redis' too, the caller's clock may differ."""
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def stream(self, name: str, key: str) -> StreamView:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(key)
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
        pipe.exists(key)
        length, first, last, exists = await pipe.execute()
        groups = len(await self.redis.xinfo_groups(key)) if exists else 0
        return StreamView(
            name=name, key=key, length=int(length),
            first_id=_s(first[0][0]) if first else None,
            last_id=_s(last[0][0]) if last else None,
            groups=groups,
        )

    async def group_names(self, key: str | None = None) -> list[str]:
        key = key or self.keys.ingest
        if not await self.redis.exists(key):
            return []
        return [_s(g["name"]) for g in await self.redis.xinfo_groups(key)]

    async def groups(self, key: str | None = None, now_ms: int | None = None) -> list[GroupView]:
        key = key or self.keys.ingest
        if not await self.redis.exists(key):
            return []
        now_ms = now_ms if now_ms is not None else await self.now_ms()
        infos = await self.redis.xinfo_groups(key)
        stream = await self.stream("ingest", key)
        return [await self._group(key, info, stream, now_ms) for info in infos]

    async def _group(self, key: str, info: dict[str, Any], stream: StreamView,
                     now_ms: int) -> GroupView:
        name = _s(info["name"])
        last_delivered = _s(info["last-delivered-id"])
        consumers = [
            ConsumerView(name=_s(c["name"]), pending=int(c["pending"]), idle_ms=int(c["idle"]))
            for c in await self.redis.xinfo_consumers(key, name)
        ]
        lag, exact = await self._lag(key, info.get("lag"), last_delivered, stream)
        oldest_id = oldest_age = oldest_idle = None
        if int(info["pending"]):
            summary = await self.redis.xpending(key, name)
            if summary["min"] is not None:
                oldest_id = _s(summary["min"])
                oldest_age = max(0, now_ms - _id_tuple(oldest_id)[0])
                rows = await self.redis.xpending_range(key, name, min=oldest_id, max=oldest_id,
                                                       count=1)
                if rows:
                    oldest_idle = int(rows[0]["time_since_delivered"])
        return GroupView(
            stream=key, name=name, consumers=consumers, pending=int(info["pending"]),
            lag=lag, lag_exact=exact, last_delivered_id=last_delivered,
            oldest_pending_id=oldest_id, oldest_pending_age_ms=oldest_age,
            oldest_pending_idle_ms=oldest_idle,
        )

    async def _lag(self, key: str, reported: Any, last_delivered: str,
                   stream: StreamView) -> tuple[int | None, bool]:
        if reported is not None:
            return int(reported), True
        if stream.length == 0 or stream.last_id is None or stream.first_id is None:
            return 0, True
        delivered = _id_tuple(last_delivered)
        if delivered >= _id_tuple(stream.last_id):
            return 0, True
        if delivered < _id_tuple(stream.first_id):
            return stream.length, True
        count, start = 0, f"({last_delivered}"
        while count < LAG_COUNT_CAP:
            rows = await self.redis.xrange(key, min=start, count=_PAGE)
            count += len(rows)
            if len(rows) < _PAGE:
                return count, True
            start = f"({_s(rows[-1][0])}"
        return count, False

    async def feeds(self) -> tuple[list[StreamView], bool]:
        """Up to `feed_sample` feed streams, and whether there are more."""
        found: list[str] = []
        cursor: Any = 0
        more = False
        for _ in range(1000):  # bound the walk over a huge keyspace
            cursor, batch = await self.redis.scan(cursor, match=self.keys.feed_pattern,
                                                  count=500)
            for k in batch:
                if len(found) < self.feed_sample:
                    found.append(_s(k))
                else:
                    more = True
            if more or int(cursor) == 0:
                break
        found.sort()
        return [await self.stream("feed", k) for k in found], more

    async def status(self) -> StatusView:
        now = await self.now_ms()
        info = await self.redis.info("server")
        streams = [await self.stream("ingest", self.keys.ingest),
                   await self.stream("dead", self.keys.dead)]
        feeds, more = await self.feeds()
        return StatusView(
            redis_version=str(info.get("redis_version", "?")),
            server_time_ms=now,
            streams=streams,
            groups=await self.groups(now_ms=now),
            feeds=feeds,
            feeds_more=more,
        )

    async def _require_group(self, group: str) -> None:
        names = await self.group_names()
        if group not in names:
            known = ", ".join(names) or "none"
            raise InspectError(f"no group {group!r} on {self.keys.ingest} (groups: {known})")

    async def pending(self, *, group: str | None = None, consumer: str | None = None,
                      min_idle_ms: int = 0, limit: int = 100) -> PendingView:
        """Pending entries oldest first, group by group, with a preview of each event."""
        if group is not None:
            await self._require_group(group)
        names = [group] if group is not None else await self.group_names()
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
            raise InspectError(
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
    event_id = fields.get(EVENT_ID_KEY)
    user = fields.get(USER_KEY)
    return PendingEntry(
        id=sid, group=group, consumer=consumer, idle_ms=idle_ms, deliveries=deliveries,
        event_id=_s(event_id) if event_id is not None else None,
        user=_s(user) if user is not None else None,
        preview=preview(fields.get(DATA_KEY)),
    )

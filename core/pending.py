"""Pending entries of the ingest streams' groups, and moving them to a consumer (claim).

Every partition has its own ingest stream and group state; entries are named by refs
(`<partition>/<stream id>`, see core.groupstream) and listed partition by partition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from livefeed.core.durations import format_ms
from livefeed.core.errors import LivefeedError
from livefeed.core.eventlog import parse_stream_id
from livefeed.core.groupstream import ref, split_ref
from livefeed.core.keys import Keys
from livefeed.core.preview import preview
from livefeed.core.redis_client import RedisClient
from livefeed.schemas.admin import ClaimView, PendingEntry, PendingView
from livefeed.schemas.stream import DATA_KEY, EVENT_ID_KEY, USER_KEY

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

    async def group_map(self) -> dict[int, list[str]]:
        """Each partition's groups (none where its stream does not exist yet), in one
        pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.keys.ingests:
            pipe.xinfo_groups(stream)
        out: dict[int, list[str]] = {}
        for p, reply in enumerate(await pipe.execute(raise_on_error=False)):
            if isinstance(reply, ResponseError) and "no such key" in str(reply).lower():
                out[p] = []
            elif isinstance(reply, Exception):
                raise reply
            else:
                out[p] = [_s(g["name"]) for g in reply]
        return out

    async def names(self, groups: dict[int, list[str]] | None = None) -> list[str]:
        """The groups found on any partition's ingest stream."""
        groups = groups if groups is not None else await self.group_map()
        return list(dict.fromkeys(name for names in groups.values() for name in names))

    @staticmethod
    def _partitions_of(groups: dict[int, list[str]], group: str) -> list[int]:
        return [p for p, names in groups.items() if group in names]

    async def _require_group(self, group: str, groups: dict[int, list[str]]) -> None:
        names = await self.names(groups)
        if group not in names:
            known = ", ".join(names) or "none"
            raise PendingError(f"no group {group!r} on the ingest streams (groups: {known})")

    async def view(self, *, group: str | None = None, consumer: str | None = None,
                      min_idle_ms: int = 0, limit: int = 100) -> PendingView:
        """Pending entries oldest first, group by group, with a preview of each event."""
        groups = await self.group_map()
        if group is not None:
            await self._require_group(group, groups)
        names = [group] if group is not None else await self.names(groups)
        entries: list[PendingEntry] = []
        total = 0
        truncated = False
        for name in names:
            for partition in self._partitions_of(groups, name):
                stream = self.keys.ingest(partition)
                total += int((await self.redis.xpending(stream, name))["pending"])
                if len(entries) >= limit and truncated:
                    continue  # only `total` is still counted
                # At the limit this probes for one more *matching* row (the filters apply).
                rows, more = await self._pending_rows(partition, name, consumer, min_idle_ms,
                                                      limit - len(entries))
                truncated = truncated or more
                entries += await self._with_payloads(partition, name, rows)
        return PendingView(entries=entries, total=total, truncated=truncated)

    async def _pending_rows(self, partition: int, group: str, consumer: str | None,
                            min_idle_ms: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """XPENDING (extended form) pages; True when more rows matched than `limit`."""
        rows: list[dict[str, Any]] = []
        start = "-"
        while True:
            want = min(_PAGE, limit - len(rows) + 1)
            if want <= 0:
                return rows, False
            page = await self.redis.xpending_range(
                self.keys.ingest(partition), group, min=start, max="+", count=want,
                consumername=consumer, idle=min_idle_ms or None,
            )
            rows += page
            if len(rows) > limit:
                return rows[:limit], True
            if len(page) < want:
                return rows, False
            start = f"({_s(page[-1]['message_id'])}"

    async def _with_payloads(self, partition: int, group: str,
                             rows: list[dict[str, Any]]) -> list[PendingEntry]:
        if not rows:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for row in rows:
            pipe.xrange(self.keys.ingest(partition), min=row["message_id"],
                        max=row["message_id"])
        found = await pipe.execute()
        out = []
        for row, hit in zip(rows, found, strict=True):
            sid = ref(partition, _s(row["message_id"]))
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
        groups = await self.group_map()
        await self._require_group(group, groups)
        partitions = self._partitions_of(groups, group)
        candidates: list[PendingEntry] = []
        for partition in partitions:
            rows, _ = await self._pending_rows(partition, group, None, min_idle_ms,
                                               limit - len(candidates))
            candidates += await self._with_payloads(partition, group, rows)
        if to is None:
            to = await self.live_consumer(group, min_idle_ms, {e.consumer for e in candidates},
                                          partitions)
        if dry_run:
            return ClaimView(group=group, to=to, min_idle_ms=min_idle_ms, dry_run=True,
                             entries=candidates)
        owners = {e.id: e for e in candidates}
        moved: list[PendingEntry] = []
        vanished: list[str] = []
        target = len(candidates)
        for partition in partitions:
            cursor = "0-0"
            nil_claimed = False
            before_moved = len(moved)
            while len(moved) < limit:
                reply = await self.redis.xautoclaim(
                    self.keys.ingest(partition), group, to, min_idle_ms, start_id=cursor,
                    count=min(100, limit - len(moved)),
                )
                cursor = _s(reply[0])
                for sid_raw, fields in reply[1]:
                    if sid_raw is None:
                        # Redis 6.2 claims an entry whose payload was deleted as a nil
                        # pair, keeping it pending under `to`; which ids: found below.
                        nil_claimed = True
                        continue
                    entry_ref = ref(partition, _s(sid_raw))
                    before = owners.get(entry_ref)
                    moved.append(_entry(
                        group, entry_ref, before.consumer if before else "?", 0,
                        (before.deliveries + 1) if before else 0, fields,
                    ))
                # Redis 7 only: ids whose payload was deleted, dropped from the pending list.
                if len(reply) > 2:
                    vanished += [ref(partition, _s(x)) for x in reply[2]]
                if progress is not None:
                    done = len(moved) + len(vanished)
                    progress(done, max(target, done))
                if cursor == "0-0":
                    break
            if nil_claimed:
                mine = [e for e in candidates if split_ref(e.id)[0] == partition]
                moved[before_moved:] = sorted(
                    moved[before_moved:] + await self._deleted_among(
                        partition, group, mine, moved[before_moved:]),
                    key=lambda e: parse_stream_id(split_ref(e.id)[1]) or (0, 0))
        return ClaimView(group=group, to=to, min_idle_ms=min_idle_ms, dry_run=False,
                         entries=moved, vanished=vanished)

    async def _deleted_among(self, partition: int, group: str,
                             candidates: list[PendingEntry],
                             moved: list[PendingEntry]) -> list[PendingEntry]:
        """The candidates XAUTOCLAIM moved without a payload: no longer in the stream."""
        got = {e.id for e in moved}
        rest = [e for e in candidates if e.id not in got]
        if not rest:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for e in rest:
            sid = split_ref(e.id)[1]
            pipe.xrange(self.keys.ingest(partition), min=sid, max=sid, count=1)
        found = await pipe.execute()
        return [_entry(group, e.id, e.consumer, 0, e.deliveries + 1, None)
                for e, rows in zip(rest, found, strict=True) if not rows]

    async def live_consumer(self, group: str, min_idle_ms: int, stale_owners: set[str],
                            partitions: list[int] | None = None) -> str:
        """The most recently active consumer that was active within `min_idle_ms` and owns
        none of the stale entries (an owner of stale entries is stuck or dead)."""
        idle: dict[str, int] = {}
        if partitions is None:
            partitions = self._partitions_of(await self.group_map(), group)
        for partition in partitions:
            for c in await self.redis.xinfo_consumers(self.keys.ingest(partition), group):
                name = _s(c["name"])
                idle[name] = min(idle.get(name, int(c["idle"])), int(c["idle"]))
        live = [(ms, name) for name, ms in idle.items()
                if ms < min_idle_ms and name not in stale_owners]
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
    event_id = fields.get(EVENT_ID_KEY)
    user = fields.get(USER_KEY)
    return PendingEntry(
        id=sid, group=group, consumer=consumer, idle_ms=idle_ms, deliveries=deliveries,
        event_id=_s(event_id) if event_id is not None else None,
        user=_s(user) if user is not None else None,
        preview=preview(fields.get(DATA_KEY)),
    )

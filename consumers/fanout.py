"""The `fanout` group: each entry into its user's feed stream plus a live PUBLISH.

`EventLog.fan_out` is one atomic, idempotent script per event (pipelined per batch), so
a redelivered entry keeps its first feed id and is not published twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import msgspec
import redis.exceptions

from livefeed.core.eventlog import EventLog
from livefeed.core.groups import GroupRunner, consumer_clients
from livefeed.core.groupstream import Entry
from livefeed.core.keys import FANOUT_GROUP, Keys
from livefeed.core.settings import Resolved
from livefeed.schemas.event import decode_event

logger = logging.getLogger(__name__)


class FanoutHandler:
    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def handle(self, entries: Sequence[Entry]) -> dict[str, str]:
        failures: dict[str, str] = {}
        good: list[Entry] = []
        for entry in entries:
            # Browsers parse what we publish: never send them a payload that does not decode.
            try:
                decode_event(entry.data)
            except msgspec.DecodeError as exc:
                failures[entry.id] = f"undecodable payload: {exc}"
            else:
                good.append(entry)
        try:
            await self.log.fan_out([(e.event_id, e.user, e.data) for e in good])
        except redis.exceptions.ResponseError:
            # One script failed (e.g. a key of the wrong type): redo one by one to find it;
            # the ones already fanned out are not repeated (idempotent per event id).
            for e in good:
                try:
                    await self.log.fan_out([(e.event_id, e.user, e.data)])
                except redis.exceptions.ResponseError as exc:
                    failures[e.id] = f"fanout failed: {exc}"
        return failures


async def run(settings: Resolved, stopping: anyio.Event, *, name: str | None = None,
              partitions: Sequence[int] | None = None) -> None:
    """The fanout role: one consumer until `stopping` is set, then drain. It shares the
    partitions with the group's other consumers through leases, or owns `partitions`."""
    keys = Keys(settings.prefix, partitions=settings.partitions)
    async with consumer_clients(settings) as clients:
        log = EventLog(clients[0], keys, feed_maxlen=settings.feed_maxlen,
                       dedupe_ttl_s=settings.dedupe_ttl_s, cluster=settings.redis_cluster)
        runner = GroupRunner.for_role(settings, keys, FANOUT_GROUP, FanoutHandler(log),
                                      clients, name=name, partitions=partitions,
                                      linger=False)
        await runner.run(stopping)

"""Views returned by the admin API and the operator CLI (`--json`)."""

from __future__ import annotations

import msgspec


class StreamView(msgspec.Struct, frozen=True):
    """One stream: `name` is its role (`ingest`, `dead`, `feed`), `key` its Redis key (a
    pattern for the total over partitions)."""

    name: str
    key: str
    length: int
    first_id: str | None
    last_id: str | None
    groups: int = 0


class ConsumerView(msgspec.Struct, frozen=True):
    name: str
    pending: int
    idle_ms: int  # since its last read or claim


class GroupView(msgspec.Struct, frozen=True):
    stream: str
    name: str
    consumers: list[ConsumerView]
    pending: int  # delivered, not acked
    lag: int | None  # entries not delivered yet; None when it cannot be told
    lag_exact: bool  # False: `lag` is a lower bound (counting stopped at a cap)
    last_delivered_id: str
    oldest_pending_id: str | None = None
    oldest_pending_age_ms: int | None = None  # since the oldest pending entry was added
    oldest_pending_idle_ms: int | None = None  # since it was last delivered


class OwnerView(msgspec.Struct, frozen=True):
    """Which consumer of a group holds a partition's lease, and for how much longer."""

    group: str
    holder: str | None  # consumer name#token; None: no lease (unowned, or static consumers)
    lease_left_ms: int | None = None
    pending: int = 0
    lag: int | None = 0


class PartitionView(msgspec.Struct, frozen=True):
    partition: int
    tag: str  # the hash tag every key of the partition carries
    ingest_length: int
    dead_length: int
    owners: list[OwnerView]


class StatusView(msgspec.Struct, frozen=True):
    redis_version: str
    server_time_ms: int
    streams: list[StreamView]  # totals over the partitions
    groups: list[GroupView]  # totals over the partitions
    feeds: list[StreamView]  # a sample of per-user feed streams (SCAN order)
    feeds_more: bool  # True when there are more feed streams than the sample shows
    partitions: list[PartitionView] = []


class PendingEntry(msgspec.Struct, frozen=True):
    id: str
    group: str
    consumer: str
    idle_ms: int
    deliveries: int
    event_id: str | None = None
    user: str | None = None
    preview: str | None = None
    gone: bool = False  # the entry was trimmed or deleted: only its pending record is left


class PendingView(msgspec.Struct, frozen=True):
    entries: list[PendingEntry]
    total: int  # pending entries of the selected groups, before filters and limit
    truncated: bool  # more entries matched than `limit`


class ClaimView(msgspec.Struct, frozen=True):
    group: str
    to: str
    min_idle_ms: int
    dry_run: bool
    entries: list[PendingEntry]  # `consumer` is the owner before the claim
    vanished: list[str] = []  # pending ids whose payload was gone (Redis 7 drops them)


class DeadLetterView(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str  # id in the dead-letter stream
    source_id: str
    group: str
    consumer: str
    error: str
    deliveries: int
    failed_at_ms: int
    event_id: str | None = None
    user: str | None = None
    preview: str | None = None
    data: str | None = None  # the full original payload, in `show` only


class DeadLetterList(msgspec.Struct, frozen=True):
    total: int
    letters: list[DeadLetterView]


class DeadAction(msgspec.Struct, frozen=True, omit_defaults=True):
    """What `dead retry` or `dead drop` did to one dead letter."""

    id: str
    outcome: str  # retried | dropped | missing | invalid
    ingest_id: str | None = None  # the new ingest entry of a retry (a ref: partition/id)
    reason: str | None = None


class GatewayView(msgspec.Struct, frozen=True):
    """Connections of the gateway that answers (each gateway reports its own)."""

    clients: dict[str, int]  # by transport
    hub: str  # healthy | unhealthy | absent
    users: int | None = None  # users with a live subscription on this gateway


class ClaimRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of POST /admin/api/claim; `min_idle` is a duration such as `60s`."""

    group: str
    min_idle: str
    to: str | None = None
    dry_run: bool = False
    limit: int = 1000


class DeadRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of POST /admin/api/dead/retry and /drop: explicit ids, or `all` (of `group`)."""

    ids: list[str] = []
    all: bool = False
    group: str | None = None

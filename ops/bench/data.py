"""Generated newsletters for the benchmarks, as events, stream payloads and table rows."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Sequence
from typing import Any

from livefeed.schemas.event import Event
from livefeed.schemas.stream import IngestEntry

ROW_COLUMNS = ("id", "user_id", "subject", "sender", "category", "received_at", "preview",
               "stream_id")
INSERT_ONE = (
    "INSERT INTO newsletters (id, user_id, subject, sender, category, received_at, preview, "
    "stream_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
)
INSERT_UNNEST = (
    "INSERT INTO newsletters (id, user_id, subject, sender, category, received_at, preview, "
    "stream_id) SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], "
    "$5::text[], $6::timestamptz[], $7::text[], $8::text[]) ON CONFLICT (id) DO NOTHING"
)


def events(count: int, users: Sequence[str], seed: int = 7, preview: str | None = None,
           ) -> list[Event]:
    """`count` events with fresh ids, spread round-robin over `users`."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    return [
        Event(
            id=uuid.UUID(int=rng.getrandbits(128), version=4),
            user_id=users[i % len(users)],
            subject=f"Weekly digest #{i}",
            sender="news@example.com",
            received_at=now,
            category=("news", "billing", "social")[i % 3],
            preview=preview if preview is not None else f"Benchmark newsletter {i} " + "x" * 80,
        )
        for i in range(count)
    ]


def triples(evs: Sequence[Event]) -> list[IngestEntry]:
    """(event id, user, payload): what ingest appends and the consumers read."""
    return [IngestEntry.of(e) for e in evs]


def row_of(e: Event, stream_id: str) -> tuple[Any, ...]:
    return (e.id, e.user_id, e.subject, e.sender, e.category, e.received_at, e.preview,
            stream_id)


def columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows to the column arrays UNNEST takes."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[]] * len(ROW_COLUMNS)

"""Generated newsletters for the benchmarks, as events and stream payloads (their table
rows: `core.newsletters.row`)."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Sequence

from livefeed.schemas.event import Event
from livefeed.schemas.stream import IngestEntry


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

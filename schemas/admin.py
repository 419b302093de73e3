"""Views returned by the admin API and the operator CLI (`--json`)."""

from __future__ import annotations

import msgspec


class DeadLetter(msgspec.Struct, frozen=True):
    """An entry a group gave up on after `LIVEFEED_MAX_DELIVERIES` failed deliveries.

    Stored as the fields of one entry of the dead-letter stream; `data` is the original
    ingest payload, byte for byte, so `dead retry` re-appends exactly what was accepted.
    """

    source_id: str  # id of the entry in the ingest stream
    group: str
    consumer: str
    error: str
    deliveries: int
    data: str
    failed_at_ms: int

"""HTTP bodies of the client-facing API: the ingest answers, the history page, errors and
the health checks. docs/openapi.json describes them (gateway/openapi.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec


class Accepted(msgspec.Struct, frozen=True):
    """202 from `POST /v1/events`: every id of the request in order (assigned ones
    included), those appended now, and those seen before (not appended again)."""

    ids: list[str]
    accepted: list[str]
    duplicates: list[str]


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """A refused ingest request: `error` a stable code (`invalid`, `too_large`, ...),
    `detail` for people, `path` the offending field (`$[3].subject`) when there is one."""

    error: str
    detail: str
    path: str | None = None


class HistoryItem(msgspec.Struct, frozen=True, omit_defaults=True):
    """One persisted newsletter in `GET /v1/feed`."""

    id: uuid.UUID
    user_id: str
    subject: str
    sender: str
    received_at: datetime
    stream_id: str
    category: str | None = None
    preview: str | None = None


class HistoryPage(msgspec.Struct, frozen=True):
    """`GET /v1/feed`: newest first; `next` is the `before` cursor of the next page, null
    on the last one."""

    items: list[HistoryItem]
    next: str | None


class ErrorBody(msgspec.Struct, frozen=True):
    """A refusal outside ingest (history, SSE, admin API): `error` says why, for people."""

    error: str


class Health(msgspec.Struct, frozen=True):
    """`GET /healthz`: the process serves (it never looks at Redis or PostgreSQL)."""

    status: Literal["ok"]


class Readiness(msgspec.Struct, frozen=True):
    """`GET /readyz`: `failed` names the checks the gateway's role needs that are not `ok`
    (then 503); `degraded` the failing ones it can serve without (PostgreSQL: ingest and
    live delivery go on, history answers 503); `checks` holds each check's result (`ok` or
    the error): `redis`, `postgres`, and `pubsub` when the gateway delivers live events."""

    ready: bool
    failed: list[str]
    degraded: list[str]
    checks: dict[str, str]


class Ticket(msgspec.Struct, frozen=True):
    """`POST /v1/tickets`: a single-use ticket for `GET /v1/sse?ticket=` (EventSource cannot
    send headers), valid `expires_in` seconds."""

    ticket: str
    expires_in: int

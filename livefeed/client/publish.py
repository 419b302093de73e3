"""Publishing events to a gateway's `POST /v1/events`, safely retried.

Every event gets an id before its first try, so a retry after a lost answer, a `503` or a
dropped connection is answered as a duplicate instead of appending the event twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import anyio
import httpx
import msgspec

from livefeed.client.backoff import Backoff

logger = logging.getLogger(__name__)

MAX_EVENTS = 1000  # per request (the gateway's limit)
MAX_BYTES = 1 << 20
_RETRY_STATUS = frozenset({502, 503, 504})
_encoder = msgspec.json.Encoder()


class PublishError(Exception):
    """The gateway refused the events (4xx): retrying the same body cannot help."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        detail = body.get("detail") if isinstance(body, dict) else body
        path = body.get("path") if isinstance(body, dict) else None
        super().__init__(f"{status}: {detail}" + (f" at {path}" if path else ""))


@dataclass
class PublishResult:
    ids: list[str] = field(default_factory=list)  # every event's id, in the order given
    accepted: list[str] = field(default_factory=list)  # newly appended
    duplicates: list[str] = field(default_factory=list)  # accepted before (e.g. a retry)


class Publisher:
    """Posts events to `url` (the gateway's base URL), signed with the webhook secret or
    authorised by an admin token."""

    def __init__(self, url: str, *, webhook_secret: str | None = None,
                 admin_token: str | None = None, timeout_s: float = 10.0,
                 attempts: int = 8, backoff: Backoff | None = None,
                 client: httpx.AsyncClient | None = None) -> None:
        if (webhook_secret is None) == (admin_token is None):
            raise ValueError("give exactly one of webhook_secret and admin_token")
        self.url = url.rstrip("/") + "/v1/events"
        self.webhook_secret = webhook_secret
        self.admin_token = admin_token
        self.attempts = attempts
        self.backoff_base = backoff or Backoff(0.2, 10.0)
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(timeout=timeout_s)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    async def publish(self, events: Sequence[Mapping[str, Any]]) -> PublishResult:
        """Post `events` in batches (≤ 1000 events, ≤ 1 MiB each); events without an `id`
        get one. Raises PublishError on a refusal, httpx errors once retries run out."""
        prepared = [dict(e) if "id" in e else {**e, "id": str(uuid.uuid4())} for e in events]
        result = PublishResult()
        for batch in _batches(prepared):
            part = await self._post(_encoder.encode(batch))
            result.ids += part["ids"]
            result.accepted += part["accepted"]
            result.duplicates += part["duplicates"]
        return result

    async def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"content-type": "application/json"}
        if self.webhook_secret is None:
            headers["authorization"] = f"Bearer {self.admin_token}"
        backoff = Backoff(self.backoff_base.base_s, self.backoff_base.cap_s)
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            if self.webhook_secret is not None:
                # Signed again on every try: the gateway refuses old timestamps.
                headers.update(signature_headers(self.webhook_secret, body))
            try:
                response = await self.client.post(self.url, content=body, headers=headers)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if last:
                    raise
                delay = backoff.next()
                logger.info("publish: %r; retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
                continue
            if response.status_code == 202:
                answer: dict[str, Any] = response.json()
                return answer
            if response.status_code in _RETRY_STATUS and not last:
                delay = max(backoff.next(), _retry_after(response))
                logger.info("publish: %d; retrying in %.2fs", response.status_code, delay)
                await anyio.sleep(delay)
                continue
            try:
                problem: Any = response.json()
            except ValueError:
                problem = response.text
            raise PublishError(response.status_code, problem)
        raise AssertionError("unreachable")


def signature_headers(secret: str, body: bytes, timestamp: int | None = None,
                      ) -> dict[str, str]:
    """`X-Livefeed-Timestamp` and `X-Livefeed-Signature: v1=<hex HMAC-SHA256(secret,
    "<timestamp>." + body)>` (the gateway refuses timestamps over 5 minutes off)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"x-livefeed-timestamp": str(ts), "x-livefeed-signature": f"v1={mac}"}


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after")
    if not value:
        return 0.0
    try:
        return min(float(value), 60.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, min((when - dt.datetime.now(dt.UTC)).total_seconds(), 60.0))


def _batches(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    size = 2
    for event in events:
        n = len(_encoder.encode(event)) + 1
        if batch and (len(batch) >= MAX_EVENTS or size + n > MAX_BYTES):
            out.append(batch)
            batch, size = [], 2
        batch.append(event)
        size += n
    if batch:
        out.append(batch)
    return out

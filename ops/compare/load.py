"""Load generator: posts events to `POST /v1/events` at a fixed rate, one request at a time.

One request in flight at a time keeps acceptance order equal to send order, so "out of
order" at a client means the system reordered, not the harness. Events due while a
request is out go in the next batch. Ids come from a seeded RNG: a cell is reproducible.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal

import anyio
import httpx
import msgspec

from livefeed.core import auth
from livefeed.ops.compare.records import Sent
from livefeed.schemas.event import MAX_BATCH_EVENTS, Event
from livefeed.schemas.http import Accepted

logger = logging.getLogger(__name__)

Auth = Literal["admin", "hmac"]
TICK_S = 0.02
REQUEST_TIMEOUT_S = 10.0

_encoder = msgspec.json.Encoder()


class LoadGenerator:
    """Posts `rate` events/s spread over `users` (evenly, or by `weights`) for `duration`
    seconds of load time.

    `clock()` is the cell's clock. `hold()` pauses the load (after the request in flight
    has been answered) and the paused time does not count towards `duration`.
    """

    def __init__(
        self,
        targets: Sequence[str],
        users: Sequence[str],
        *,
        rate: float,
        duration: float,
        seed: int,
        clock: Callable[[], float],
        auth_mode: Auth = "admin",
        secret: str,
        webhook_secret: str,
        preview_chars: int = 80,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.targets = list(targets)
        self.users = list(users)
        self.weights = list(weights) if weights is not None else None
        self.rate = rate
        self.duration = duration
        self.rng = random.Random(seed)
        self.clock = clock
        self.auth_mode = auth_mode
        self.admin_token = auth.mint(secret, "livefeed-compare", admin=True, ttl_s=3600)
        self.webhook_secret = webhook_secret
        self.preview = "x" * preview_chars
        self.sent: list[Sent] = []
        self.errors: Counter[str] = Counter()
        self.done = anyio.Event()
        self._target = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._resume = anyio.Event()
        self._resume.set()
        self._held_s = 0.0

    @property
    def accepted(self) -> int:
        return sum(1 for s in self.sent if s.accepted)

    def _events(self, count: int, start_seq: int) -> list[Event]:
        now = dt.datetime.now(dt.UTC)
        return [
            Event(
                id=uuid.UUID(int=self.rng.getrandbits(128), version=4),
                user_id=self.rng.choices(self.users, self.weights)[0],
                subject=f"compare #{start_seq + i}",
                sender="load@compare.livefeed",
                received_at=now,
                preview=self.preview,
            )
            for i in range(count)
        ]

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.auth_mode == "hmac":
            headers.update(auth.signature_headers(self.webhook_secret, body))
        else:
            headers["authorization"] = f"Bearer {self.admin_token}"
        return headers

    async def run(self) -> None:
        """Post until `duration` seconds of (unheld) load time have passed."""
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
                while True:
                    await self._resume.wait()
                    if not self._resume.is_set():  # held while we waited
                        continue
                    elapsed = time.monotonic() - started - self._held_s
                    if elapsed >= self.duration:
                        break
                    due = min(int(elapsed * self.rate) - len(self.sent), MAX_BATCH_EVENTS)
                    if due > 0:
                        self._idle = anyio.Event()
                        try:
                            await self._post(client, self._events(due, len(self.sent)))
                        finally:
                            self._idle.set()
                    await anyio.sleep(TICK_S)
        finally:
            self.done.set()

    async def _post(self, client: httpx.AsyncClient, events: list[Event]) -> None:
        body = _encoder.encode(events)
        target = self.targets[self._target % len(self.targets)]
        t_post = self.clock()
        batch = [
            Sent(seq=len(self.sent) + i, event_id=str(e.id), user=e.user_id, t_post=t_post)
            for i, e in enumerate(events)
        ]
        self.sent.extend(batch)
        status: int | None = None
        ok: set[str] = set()
        try:
            r = await client.post(f"{target}/v1/events", content=body, headers=self._headers(body))
            status = r.status_code
            if status == 202:
                reply = msgspec.json.decode(r.content, type=Accepted)
                ok = {*reply.accepted, *reply.duplicates}
            else:
                self.errors[f"HTTP {status}"] += 1
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            # The next batch tries the next gateway: one may have been killed.
            self._target += 1
        except msgspec.DecodeError:
            self.errors["bad 202 body"] += 1
        t_done = self.clock()
        for s in batch:
            s.t_done = t_done
            s.status = status
            s.accepted = s.event_id in ok

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Pause the load: on entry no request is in flight, and none starts until exit."""
        self._resume = anyio.Event()
        began = time.monotonic()
        await self._idle.wait()
        try:
            yield
        finally:
            self._held_s += time.monotonic() - began
            self._resume.set()

"""Helpers for the live-delivery tests: events into feed streams, gateway processes, clients."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection

from livefeed.core import auth
from livefeed.core.embedded import free_port
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.core.settings import Settings
from livefeed.gateway.app import DEFAULT_FEATURES, create_app
from livefeed.gateway.feature import Feature
from livefeed.gateway.hub import Hub
from livefeed.ops.protocols import Bounds
from livefeed.ops.serve import Server, uvicorn_config
from livefeed.schemas.event import Event
from livefeed.schemas.frames import split_message
from livefeed.schemas.stream import IngestEntry
from tests.helpers.waiting import eventually
from tests.procs import Proc, start_gateway

SECRET = "live-test-secret-long-enough-for-hs256!"


def token(user: str, **kw: Any) -> str:
    return auth.mint(SECRET, user, **kw)


def bearer_for(tok: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tok}"}


def bearer(user: str, **kw: Any) -> dict[str, str]:
    """The Authorization header of a token for `user`."""
    return bearer_for(token(user, **kw))


def event(user: str, i: int, *, preview: str | None = None) -> IngestEntry:
    ev = Event(user_id=user, subject=f"subject {i}", sender=f"sender{i}@example.com",
               received_at=datetime.now(UTC), id=uuid.uuid4(), preview=preview)
    return IngestEntry.of(ev)


async def publish(log: EventLog, user: str, n: int, *, start: int = 0,
                  preview: str | None = None) -> list[str]:
    """Fan `n` events out to `user` (feed stream + live channel), as the fanout consumer does;
    returns their feed ids in order."""
    ids: list[str] = []
    for lo in range(0, n, 200):
        batch = [event(user, start + i, preview=preview) for i in range(lo, min(n, lo + 200))]
        ids += [f.feed_id for f in await log.fan_out(batch)]
    return ids


@dataclass(frozen=True)
class WsTarget:
    """Where a WebSocket client connects, and the token it authenticates with."""

    url: str
    token: str


def ws_url(base: str, user: str, last_id: str | None = None, tok: str | None = None,
           ) -> WsTarget:
    url = base.replace("http://", "ws://") + "/v1/ws"
    return WsTarget(url + (f"?last_id={last_id}" if last_id else ""), tok or token(user))


def auth_message(tok: str, kind: str = "auth") -> str:
    return json.dumps({"type": kind, "token": tok})


@contextlib.asynccontextmanager
async def served(app: Any, settings: Settings | None = None, **kw: Any,
                 ) -> AsyncIterator[tuple[Server, str]]:
    """`app` under uvicorn in this event loop, configured as `livefeed gateway` runs it
    (`kw`: more uvicorn settings): the server and its URL."""
    port = free_port()
    server = Server(uvicorn_config(app, host="127.0.0.1", port=port,
                                   bounds=Bounds(settings or Settings()), **kw))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        try:
            await eventually(lambda: server.started, what="uvicorn serving")
            yield server, f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@contextlib.asynccontextmanager
async def serving(app: Any, settings: Settings | None = None) -> AsyncIterator[str]:
    async with served(app, settings) as (_, url):
        yield url


class WsClient:
    """A real `websockets` client that keeps every frame it received (pings aside)."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []
        self.pings = 0
        self.messages = 0  # WebSocket messages: fewer than frames when the gateway coalesces
        self._unread: list[dict[str, Any]] = []  # frames of a message not yet returned

    @classmethod
    async def open(cls, target: WsTarget, *, header: bool = False, **kw: Any) -> WsClient:
        """Connected, authenticated by its first message (as browsers do), or by an
        `Authorization` header on the handshake with `header=True`."""
        if header:
            kw["additional_headers"] = {"authorization": f"Bearer {target.token}"}
        client = cls(await websockets.connect(target.url, open_timeout=20, **kw))
        if not header:
            await client.conn.send(auth_message(target.token))
        return client

    async def recv(self) -> dict[str, Any]:
        """The next frame that is not a keepalive `ping`."""
        while True:
            if not self._unread:
                message = await self.conn.recv()
                self.messages += 1
                self._unread = [json.loads(f) for f in split_message(message)]
            frame = self._unread.pop(0)
            if frame["type"] != "ping":
                return frame
            self.pings += 1

    def events(self) -> list[str]:
        return [f["id"] for f in self.frames if f["type"] == "event"]

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]

    async def until(self, done: Callable[[WsClient], bool], timeout: float = 60) -> None:
        with anyio.fail_after(timeout):
            while not done(self):
                self.frames.append(await self.recv())

    async def until_events(self, n: int, timeout: float = 60) -> None:
        await self.until(lambda c: len(c.events()) >= n, timeout)

    async def until_pings(self, n: int, timeout: float = 30) -> None:
        """Until `n` keepalive pings came (keeping the other frames meanwhile)."""
        with anyio.fail_after(timeout):
            while self.pings < n:
                with anyio.move_on_after(0.5):
                    self.frames.append(await self.recv())

    async def close(self) -> None:
        await self.conn.close()


def assert_exact(got: list[str], want: list[str]) -> None:
    """Same ids, same order, no duplicates; the message says what differs."""
    assert len(got) == len(set(got)), f"duplicates: {len(got) - len(set(got))}"
    missing = [i for i in want if i not in set(got)]
    extra = [i for i in got if i not in set(want)]
    assert not missing and not extra, f"missing {missing[:5]}.. extra {extra[:5]}.."
    assert got == want, "same ids, wrong order"


class Gateways:
    """Real `livefeed gateway` processes for one test's servers; all killed on exit."""

    def __init__(self, settings_factory: Callable[..., Settings], log_dir: Path) -> None:
        self.settings_factory = settings_factory
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, port: int | None = None, **overrides: Any) -> tuple[Proc, str]:
        settings = self.settings_factory(secret=SECRET, **overrides)
        proc, url = start_gateway(settings, self.log_dir, port=port)
        self.procs.append(proc)
        return proc, url

    def __enter__(self) -> Gateways:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()


async def tells_an_intact_head(redis: Any) -> bool:
    """Whether this Redis counts the entries ever added to a stream (7 and later), so a
    resume from FEED_START replays; Redis 6.2 cannot tell and answers `trimmed`."""
    version = str((await redis.info("server"))["redis_version"])
    return int(version.split(".")[0]) >= 7


async def numsub(redis: Any, channel: str) -> int:
    """Subscribers of a (non-sharded) pub/sub channel."""
    return int((await redis.pubsub_numsub(channel))[0][1])


def reconnects() -> float:
    """Pub/sub links this process's hubs have reopened."""
    return REGISTRY.get_sample_value("livefeed_pubsub_reconnects_total") or 0.0


class Counting:
    """A hub listener that keeps the live frames it got, and the size of each burst."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.bursts: list[int] = []
        self.resyncs = 0

    def on_live(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.bursts.append(1)

    def on_live_many(self, frames: list[bytes]) -> None:
        self.frames += frames
        self.bursts.append(len(frames))

    def on_resync(self) -> None:
        self.resyncs += 1


def make_log(redis: Any, keys: Keys, maxlen: int = 10_000) -> EventLog:
    return EventLog(redis, keys, feed_maxlen=maxlen, dedupe_ttl_s=600)


# Fixtures shared by tests/gateway and tests/e2e (registered in tests/conftest.py).

@contextlib.asynccontextmanager
async def running_hub(redis_url: str, keys: Keys, **options: Any) -> AsyncIterator[Hub]:
    """A running pub/sub hub of this prefix (pinging its link every second), connected."""
    h = Hub(redis_url, keys, ping_interval_s=1.0, **options)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.run)
        with anyio.fail_after(10):
            await h.connected_once.wait()
        yield h
        tg.cancel_scope.cancel()
    await h.aclose()


@pytest.fixture
async def hub(redis_url: str, keys: Keys) -> AsyncIterator[Hub]:
    async with running_hub(redis_url, keys) as h:
        yield h


@pytest.fixture
def gateways(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[Gateways]:
    with Gateways(settings_factory, tmp_path / "logs") as g:
        yield g


@contextlib.asynccontextmanager
async def app_client(settings: Settings, features: Sequence[Feature] = DEFAULT_FEATURES,
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette]]:
    """The gateway app in process with its lifespan running (only `features` plugged in),
    and an HTTP client for it."""
    app = create_app(settings, features)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, app

"""A whole livefeed deployment of real processes for end-to-end and chaos tests:
gateways, persist and fanout consumers, a poster that retries the way a webhook sender
does (every 503 and dropped connection: the same body again), and WebSocket clients that
reconnect from their last id. Everything is counted by event id."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import websockets
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from livefeed.core import auth
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.leases import owners
from livefeed.core.settings import Settings
from livefeed.schemas.frames import split_message
from tests.gateway.livehelp import SECRET, token
from tests.procs import Proc, start_gateway


def events_of(user: str, start: int, n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [{"id": str(uuid.uuid4()), "user_id": user, "subject": f"{user} #{start + i}",
             "sender": "letters@example.com", "received_at": now} for i in range(n)]


class Poster:
    """Posts bodies to any live gateway, retrying each body until it is answered 202."""

    def __init__(self, settings: Settings, urls: Callable[[], Sequence[str]]) -> None:
        assert settings.webhook_secret is not None
        self.secret = settings.webhook_secret
        self.urls = urls
        self.accepted: list[str] = []  # every id of a body answered 202, in order
        self.users: dict[str, str] = {}  # event id -> user, of every accepted event
        self.retries = 0
        self.refused: list[int] = []  # statuses other than 202/503 (a bug if any)

    async def post(self, http: httpx.AsyncClient, events: list[dict[str, Any]],
                   timeout: float = 120) -> None:
        body = json.dumps(events).encode()
        attempt = 0
        with anyio.fail_after(timeout):
            while True:
                urls = self.urls()
                url = urls[attempt % len(urls)]
                attempt += 1
                headers = {**auth.signature_headers(self.secret, body),
                           "content-type": "application/json"}
                try:
                    r = await http.post(f"{url}/v1/events", content=body, headers=headers)
                except httpx.HTTPError:
                    self.retries += 1
                    await anyio.sleep(0.1)
                    continue
                if r.status_code == 202:
                    self.accepted += [e["id"] for e in events]
                    self.users.update((e["id"], e["user_id"]) for e in events)
                    return
                if r.status_code != 503:
                    self.refused.append(r.status_code)
                    raise AssertionError(f"POST answered {r.status_code}: {r.text}")
                self.retries += 1
                await anyio.sleep(0.1)


class Follower:
    """One user's WebSocket client: reconnects (to any live gateway) from its last id,
    records every event frame's event id, and every reset."""

    def __init__(self, user: str, urls: Callable[[], Sequence[str]]) -> None:
        self.user = user
        self.urls = urls
        self.received: list[str] = []  # event ids, in arrival order (duplicates kept)
        self.last_id: str | None = None
        self.resets: list[dict[str, Any]] = []
        self.reconnects = 0
        self.ready = anyio.Event()

    async def run(self) -> None:
        attempt = 0
        while True:
            urls = self.urls()
            base = urls[attempt % len(urls)].replace("http://", "ws://")
            attempt += 1
            url = f"{base}/v1/ws"
            if self.last_id:
                url += f"?last_id={self.last_id}"
            try:
                async with websockets.connect(url, open_timeout=10) as ws:
                    await ws.send(json.dumps({"type": "auth", "token": token(self.user)}))
                    async for message in ws:
                        for frame in split_message(message):
                            self._take(json.loads(frame))
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                pass
            self.reconnects += 1
            await anyio.sleep(0.1)

    def _take(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "event":
            self.received.append(frame["data"]["id"])
            self.last_id = frame["id"]
        elif kind in ("hello", "recovered") and frame.get("last_id"):
            self.last_id = self.last_id or frame["last_id"]
        elif kind == "reset":
            self.resets.append(frame)
            self.last_id = frame.get("last_id")
        if kind in ("hello", "recovered", "reset"):
            self.ready.set()


class Deployment:
    """Gateways and consumers of `settings`, all killed on exit."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        """`settings` must sign tokens with tests.gateway.livehelp.SECRET (the followers'
        tokens)."""
        assert settings.secret == SECRET
        self.settings = settings
        self.log_dir = log_dir
        self.gateways: dict[str, Proc] = {}
        self.consumers: dict[str, Proc] = {}

    def live_urls(self) -> list[str]:
        return [url for url, proc in self.gateways.items() if proc.alive()]

    def gateway(self) -> str:
        proc, url = start_gateway(self.settings, self.log_dir)
        self.gateways[url] = proc
        return url

    def consumer(self, role: str, name: str) -> Proc:
        proc = Proc(["consumer", role, "--name", name], self.settings, self.log_dir,
                    name=name).start()
        self.consumers[name] = proc
        return proc

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in [*self.gateways.values(), *self.consumers.values()]:
            with contextlib.suppress(Exception):
                proc.kill()


def exactly_once_in_order(got: list[str], want: list[str]) -> str | None:
    """None if `got` holds every id of `want` once, in `want`'s order; else what differs."""
    if len(got) != len(set(got)):
        return f"{len(got) - len(set(got))} duplicates"
    missing = set(want) - set(got)
    extra = set(got) - set(want)
    if missing or extra:
        return f"{len(missing)} missing, {len(extra)} unexpected"
    return None if got == want else "same ids, another order"


class Load:
    """One event per user per request (so a request spans several partitions), posted
    one request after the other, so each user's accepted order is its feed order; a
    follower per user."""

    def __init__(self, dep: Deployment, users: Sequence[str]) -> None:
        self.users = list(users)
        self.poster = Poster(dep.settings, dep.live_urls)
        self.followers = [Follower(u, dep.live_urls) for u in self.users]

    async def follow(self, tg: Any, timeout: float = 60) -> None:
        """Start every follower in `tg`; return once each was greeted (hello)."""
        for f in self.followers:
            tg.start_soon(f.run)
        with anyio.fail_after(timeout):
            for f in self.followers:
                await f.ready.wait()

    async def post_rounds(self, http: httpx.AsyncClient, start: int, rounds: int) -> None:
        for n in range(start, start + rounds):
            await self.poster.post(http, [e for u in self.users for e in events_of(u, n, 1)])
            await anyio.sleep(0.01)


def owed(poster: Poster, user: str) -> list[str]:
    """The accepted event ids of `user`, in accepted order."""
    return [i for i, u in poster.users.items() if u == user]


async def consumers_own_everything(client: Any, keys: Keys) -> bool:
    """Both groups' consumers hold every partition's lease."""
    for group in (PERSIST_GROUP, FANOUT_GROUP):
        if len(await owners(client, keys, group)) < keys.count:
            return False
    return True


async def settled(client: Any, keys: Keys, pool: asyncpg.Pool, load: Load) -> bool:
    """Every accepted event stored, every follower has its events, nothing pending."""
    try:
        if await pool.fetchval("SELECT count(*) FROM newsletters") < len(load.poster.accepted):
            return False
        for f in load.followers:
            if len(set(f.received)) < len(owed(load.poster, f.user)):
                return False
        for stream in keys.ingests:
            if not await client.exists(stream):
                continue
            for group in (PERSIST_GROUP, FANOUT_GROUP):
                if int((await client.xpending(stream, group))["pending"]):
                    return False
    except RedisConnectionError:  # the test's own connection, from before a restart
        return False
    return True


def _missing_doubled(got: list[str], want: list[str]) -> tuple[int, int]:
    return len(set(want) - set(got)), len(got) - len(set(got))


async def check_exact(client: Any, keys: Keys, pool: asyncpg.Pool, load: Load) -> None:
    """Rows, feeds and every follower hold each accepted event once, in order; no reset.

    Prints the run's figures first (shown with `pytest -rP`, and above a failure)."""
    stored = [str(r["id"]) for r in await pool.fetch("SELECT id FROM newsletters")]
    feeds = {f.user: [json.loads(fields[b"data"])["id"]
                      for _, fields in await client.xrange(keys.feed(f.user))]
             for f in load.followers}
    figures = {"accepted": len(load.poster.accepted), "retried posts": load.poster.retries,
               "rows": len(stored), "feed entries": sum(map(len, feeds.values())),
               "deliveries": sum(len(f.received) for f in load.followers),
               "client reconnects": sum(f.reconnects for f in load.followers)}
    for name, pairs in (("rows", [(stored, load.poster.accepted)]),
                        ("feed", [(feeds[f.user], owed(load.poster, f.user))
                                  for f in load.followers]),
                        ("delivery", [(f.received, owed(load.poster, f.user))
                                      for f in load.followers])):
        counts = [_missing_doubled(got, want) for got, want in pairs]
        figures[f"{name} missing"] = sum(m for m, _ in counts)
        figures[f"{name} duplicated"] = sum(d for _, d in counts)
    print("figures:", ", ".join(f"{k} {v}" for k, v in figures.items()))
    assert sorted(stored) == sorted(load.poster.accepted), "rows missing or doubled"
    for f in load.followers:
        want = owed(load.poster, f.user)
        assert exactly_once_in_order(f.received, want) is None, (
            f.user, exactly_once_in_order(f.received, want))
        assert exactly_once_in_order(feeds[f.user], want) is None, (
            f.user, "feed", exactly_once_in_order(feeds[f.user], want))
        assert f.resets == []

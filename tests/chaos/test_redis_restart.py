"""A standalone Redis SIGKILLed under a running deployment (real gateway, persist and fanout
processes) and restarted on the same port and data dir: what each persistence setting of
the embedded server guarantees (docs/design.md, Failure semantics).

- With AOF (`appendonly yes`, `appendfsync everysec`, the embedded default) nothing that
  was answered `202` is lost and clients resume exactly, without a `reset`. A SIGKILL of the
  server process loses nothing: every write is in the AOF file (the kernel's page cache)
  before its reply is sent, and the kernel still flushes that cache after the process
  died. `everysec` can lose up to about a second of acknowledged writes only on a crash
  of the *machine* (power, kernel), which this test does not simulate.
- Without persistence everything Redis held is gone: clients get `reset` with reason
  `stream_lost` (and a resume point), consumers recreate their groups, nothing hangs: new
  events are stored and delivered, and the gateway stays up.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from livefeed.core import redis_client
from livefeed.core.embedded import EmbeddedRedis, free_port
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.settings import Settings
from tests.gateway.livehelp import SECRET
from tests.helpers.pipeline import (
    Deployment,
    Load,
    consumers_own_everything,
    exactly_once_in_order,
    owed,
    settled,
)
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(120)]

USERS = [f"user{i}" for i in range(6)]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[[bool], EmbeddedRedis]]:
    started: list[EmbeddedRedis] = []

    def start(persist: bool) -> EmbeddedRedis:
        server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persist=persist).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def client_of() -> AsyncIterator[Callable[[str], Any]]:
    clients: list[Any] = []

    def connect(url: str) -> Any:
        client = redis_client.connect(url)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.aclose()


def kill(server: EmbeddedRedis) -> None:
    """SIGKILL the server (no AOF rewrite, no shutdown of any kind), reap it."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    server.proc = None


def restart(server: EmbeddedRedis) -> None:
    """The same port and data dir (from the main thread, as `start` must be)."""
    (server.dir / "redis.pid").unlink(missing_ok=True)
    server.start()


def deployment(settings_factory: Callable[..., Settings], url: str, log_dir: Path) -> Deployment:
    settings = settings_factory(redis_url=url, secret=SECRET, lease_ms=2000,
                                claim_idle_ms=3000, flush_ms=50)
    return Deployment(settings, log_dir)


def start(dep: Deployment) -> None:
    dep.gateway()
    dep.consumer("persist", "persist-a")
    dep.consumer("fanout", "fanout-a")


async def test_with_aof_a_sigkilled_redis_loses_no_acknowledged_event(
        settings_factory: Callable[..., Settings], server_factory: Callable[[bool], EmbeddedRedis],
        client_of: Callable[[str], Any], pool: asyncpg.Pool, tmp_path: Path) -> None:
    server = server_factory(True)
    client = client_of(server.url)
    with deployment(settings_factory, server.url, tmp_path / "logs") as dep:
        start(dep)
        keys = Keys(dep.settings.prefix, partitions=dep.settings.partitions)
        # Running, not starting: a consumer that cannot reach Redis at start exits.
        await eventually(lambda: consumers_own_everything(client, keys),
                         what="both consumers holding their partitions", timeout=30,
                         procs=tuple(dep.consumers.values()))
        load = Load(dep, USERS)
        async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=10) as http:
            await load.follow(tg, timeout=30)
            await load.post_rounds(http, 0, 10)
            # Killed while requests are in flight: some appends are answered, some refused
            # (503, retried by the poster), some may be done without their answer.
            async with anyio.create_task_group() as posting:
                posting.start_soon(load.post_rounds, http, 10, 30)
                await anyio.sleep(0.3)
                kill(server)
                # Down for longer than a lease (2 s): the consumers' leases lapse meanwhile,
                # and they must win them back and take their partitions over again.
                await anyio.sleep(3.0)
                restart(server)
            await client.connection_pool.disconnect()  # connections to the killed server
            await load.post_rounds(http, 40, 10)
            await eventually(lambda: settled(client, keys, pool, load),
                             what="every acknowledged event stored and delivered",
                             timeout=45, interval=0.2, procs=tuple(dep.consumers.values()))
            tg.cancel_scope.cancel()

        stored = [str(r["id"]) for r in await pool.fetch("SELECT id FROM newsletters")]
        assert sorted(stored) == sorted(load.poster.accepted), "rows missing or doubled"
        for f in load.followers:
            want = owed(load.poster, f.user)
            assert exactly_once_in_order(f.received, want) is None, (
                f.user, exactly_once_in_order(f.received, want))
            feed = [json.loads(fields[b"data"])["id"]
                    for _, fields in await client.xrange(keys.feed(f.user))]
            assert exactly_once_in_order(feed, want) is None, (
                f.user, "feed", exactly_once_in_order(feed, want))
            assert f.resets == [], (f.user, f.resets)
        assert len(load.poster.accepted) == 50 * len(USERS)
        assert load.poster.retries >= 1, "the outage was seen (503s or dropped requests)"
        assert all(p.alive() for p in [*dep.gateways.values(), *dep.consumers.values()])
        print(f"aof: accepted {len(load.poster.accepted)}, stored {len(stored)}, delivered "
              f"{sum(len(f.received) for f in load.followers)}, resets 0, poster retries "
              f"{load.poster.retries}, follower reconnects "
              f"{sum(f.reconnects for f in load.followers)}")


async def test_without_persistence_clients_reset_and_consumers_recreate_their_groups(
        settings_factory: Callable[..., Settings], server_factory: Callable[[bool], EmbeddedRedis],
        client_of: Callable[[str], Any], pool: asyncpg.Pool, tmp_path: Path) -> None:
    server = server_factory(False)
    client = client_of(server.url)
    with deployment(settings_factory, server.url, tmp_path / "logs") as dep:
        start(dep)
        keys = Keys(dep.settings.prefix, partitions=dep.settings.partitions)
        # Running, not starting: a consumer that cannot reach Redis at start exits.
        await eventually(lambda: consumers_own_everything(client, keys),
                         what="both consumers holding their partitions", timeout=30,
                         procs=tuple(dep.consumers.values()))
        load = Load(dep, USERS)
        async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=10) as http:
            await load.follow(tg, timeout=30)
            await load.post_rounds(http, 0, 10)
            await eventually(lambda: settled(client, keys, pool, load),
                             what="the first events stored and delivered", timeout=30,
                             interval=0.2, procs=tuple(dep.consumers.values()))
            before = len(load.poster.accepted)

            kill(server)
            await anyio.sleep(1.0)
            restart(server)
            await client.connection_pool.disconnect()  # connections to the killed server
            for u in USERS:
                assert not await client.exists(keys.feed(u)), "no persistence: feeds gone"
            # Every client learns that its feed's history is gone (before anything new is
            # fanned out: afterwards its old id would be older than the new stream's head,
            # a `trimmed`), with the start of the new feed as its resume point.
            await eventually(lambda: all(f.resets for f in load.followers),
                             what="every follower reset", timeout=30, interval=0.1,
                             procs=tuple(dep.gateways.values()))
            await load.post_rounds(http, 10, 10)
            await eventually(lambda: settled(client, keys, pool, load),
                             what="new events stored and delivered after the restart",
                             timeout=45, interval=0.2,
                             procs=(*dep.gateways.values(), *dep.consumers.values()))
            tg.cancel_scope.cancel()

        stored = [str(r["id"]) for r in await pool.fetch("SELECT id FROM newsletters")]
        assert sorted(stored) == sorted(load.poster.accepted)
        for f in load.followers:
            want = owed(load.poster, f.user)
            assert exactly_once_in_order(f.received, want) is None, (
                f.user, exactly_once_in_order(f.received, want))
            assert [r["reason"] for r in f.resets] == ["stream_lost"], (f.user, f.resets)
            assert f.resets[0]["last_id"] == "0-0"
        for stream in keys.ingests:
            if await client.exists(stream):
                groups = {g["name"] for g in await client.xinfo_groups(stream)}
                assert groups == {PERSIST_GROUP.encode(), FANOUT_GROUP.encode()}, groups
        assert len(load.poster.accepted) == before + 10 * len(USERS)
        gateway = next(iter(dep.gateways))
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{gateway}/readyz")).status_code == 200
        assert all(p.alive() for p in [*dep.gateways.values(), *dep.consumers.values()])
        print(f"no persistence: accepted {len(load.poster.accepted)}, stored {len(stored)}, "
              f"delivered {sum(len(f.received) for f in load.followers)}, resets "
              f"{sum(len(f.resets) for f in load.followers)}, follower reconnects "
              f"{sum(f.reconnects for f in load.followers)}")

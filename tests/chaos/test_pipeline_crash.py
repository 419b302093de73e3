"""The pipeline under real crashes: real gateway and consumer processes, real SIGKILL."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import msgspec
import pytest

from livefeed.core import auth, leases
from livefeed.core.embedded import free_port
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.settings import Settings
from livefeed.ops.faultproxy import FaultProxy
from livefeed.schemas.event import Event, decode_event, encode_event
from tests.helpers.streams import dead_rows, pending_total
from tests.helpers.waiting import eventually
from tests.procs import Proc, running, start_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
USERS = [f"user{i}" for i in range(10)]


def events(n: int) -> list[Event]:
    now = dt.datetime.now(dt.UTC)
    return [Event(id=uuid.uuid4(), user_id=USERS[i % len(USERS)], subject=f"Digest #{i}",
                  sender="news@example.com", received_at=now) for i in range(n)]


def consumer(role: str, name: str, settings: Settings, log_dir: Path,
             *extra: str) -> Proc:
    return Proc(["consumer", role, "--name", name, *extra], settings, log_dir,
                name=f"{role}-{name}").start()


# Consumers share the partitions through leases; a SIGKILLed one's partitions move to
# another consumer after LIVEFEED_LEASE_MS (kept short here; above the idle refresh cadence,
# which a blocking read of up to a second bounds).
LEASE_MS = 2000


async def consumers_of(redis: Any, keys: Keys, group: str) -> set[bytes]:
    """The consumer names `group` lists on any partition's stream."""
    names: set[bytes] = set()
    for stream in keys.ingests:
        if await redis.exists(stream):
            names |= {c["name"] for c in await redis.xinfo_consumers(stream, group)}
    return names


async def test_persist_killed_mid_run_loses_and_duplicates_nothing(
    settings_factory: Callable[..., Settings], redis: Any, keys: Keys, pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    settings = settings_factory(batch_size=200, flush_ms=100, claim_idle_ms=3000,
                                lease_ms=LEASE_MS)
    sent = events(10_000)
    gateway, url = start_gateway(settings, tmp_path)
    persist = consumer("persist", "p1", settings, tmp_path)
    fanout = consumer("fanout", "f1", settings, tmp_path)
    restarted: Proc | None = None
    with running(gateway, persist, fanout):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for n, start in enumerate(range(0, len(sent), 500)):
                body = msgspec.json.encode(sent[start : start + 500])
                headers = {**auth.signature_headers(settings.webhook_secret or "", body),
                           "content-type": "application/json"}
                r = await client.post("/v1/events", content=body, headers=headers)
                assert r.status_code == 202, r.text
                assert len(r.json()["accepted"]) == 500
                if n == 7:  # 4,000 in: wait for persist to be writing, then kill it

                    async def writing() -> bool:
                        return bool(await pool.fetchval("SELECT count(*) FROM newsletters"))

                    await eventually(writing, timeout=60, what="persist writing", procs=(persist,),
                                     interval=0.1)
                    persist.kill()
                if n == 13:
                    restarted = consumer("persist", "p1", settings, tmp_path)

        assert restarted is not None
        with running(restarted):

            async def drained() -> bool:
                rows = await pool.fetchval("SELECT count(*) FROM newsletters")
                return bool(rows == len(sent)
                            and await pending_total(redis, keys, PERSIST_GROUP) == 0
                            and await pending_total(redis, keys, FANOUT_GROUP) == 0
                            and sum([await redis.xlen(keys.feed(u)) for u in USERS])
                            == len(sent))

            await eventually(drained, timeout=120, what="drained pipeline",
                             procs=(restarted, fanout), interval=0.1)
            assert restarted.terminate() == 0
            assert fanout.terminate() == 0

    got = await pool.fetch("SELECT id, user_id, stream_id FROM newsletters")
    assert len(got) == len(sent)
    assert {r["id"] for r in got} == {e.id for e in sent}
    # a row keeps its entry's stream id, unique within the user's partition's stream
    assert len({(keys.partition_of(r["user_id"]), r["stream_id"]) for r in got}) == len(sent)
    for user in USERS:
        feed = [decode_event(f[b"data"]).id for _, f in await redis.xrange(keys.feed(user))]
        assert feed == [e.id for e in sent if e.user_id == user]  # each once, in order
    # the restarted p1 (which took over the killed one's partitions and pending entries under
    # the same name) left the group cleanly on every partition
    assert b"p1" not in await consumers_of(redis, keys, PERSIST_GROUP)


def scrape(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(rf'^{name}{{group="persist"}} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_two_consumers_split_the_work_and_the_survivor_claims_the_dead_ones(
    settings_factory: Callable[..., Settings], redis: Any, keys: Keys, pool: asyncpg.Pool,
    database_url: str, tmp_path: Path,
) -> None:
    async with FaultProxy.for_url(database_url) as proxy:
        # Consumers reach PostgreSQL through the proxy: cut, each holds one batch pending.
        settings = settings_factory(database_url=proxy.url_for(database_url), batch_size=100,
                                    flush_ms=50, claim_idle_ms=1000, lease_ms=LEASE_MS)
        proxy.cut()
        port = free_port()
        a = consumer("persist", "a", settings, tmp_path)
        b = consumer("persist", "b", settings, tmp_path, "--metrics-port", str(port))
        with running(a, b):

            owner: dict[int, str] = {}  # partition -> the name of its lease holder

            async def split() -> bool:
                """The two share the partitions evenly (before any entry is appended)."""
                held = {p: token.partition("#")[0] for p, (token, _) in
                        (await leases.owners(redis, keys, PERSIST_GROUP)).items()}
                half = keys.count // 2
                if len(held) == keys.count and Counter(held.values()) == {"a": half, "b": half}:
                    owner.update(held)
                    return True
                return False

            await eventually(split, timeout=60, what="partitions shared by a and b",
                             procs=(a, b), interval=0.1)
            # one user in a partition of each: each consumer reads one stream, as before
            ua = next(u for u in (f"user{i}" for i in range(1000))
                      if owner[keys.partition_of(u)] == "a")
            ub = next(u for u in (f"user{i}" for i in range(1000))
                      if owner[keys.partition_of(u)] == "b")
            now = dt.datetime.now(dt.UTC)
            sent = [Event(id=uuid.uuid4(), user_id=(ua, ub)[i % 2], subject=f"Digest #{i}",
                          sender="news@example.com", received_at=now) for i in range(1000)]
            log = EventLog(redis, keys, feed_maxlen=100, dedupe_ttl_s=600)
            await log.append([(str(e.id), e.user_id, encode_event(e)) for e in sent])

            async def both_hold_a_batch() -> bool:
                held: dict[tuple[int, bytes], int] = {}
                for p, stream in enumerate(keys.ingests):
                    if await redis.exists(stream):
                        summary = await redis.xpending(stream, PERSIST_GROUP)
                        for c in summary["consumers"] or []:
                            held[(p, c["name"])] = int(c["pending"])
                # each holds one batch, of its own partition's entries, and nothing else
                return held == {(keys.partition_of(ua), b"a"): 100,
                                (keys.partition_of(ub), b"b"): 100}

            await eventually(both_hold_a_batch, timeout=60, what="batch held by both consumers",
                             procs=(a, b), interval=0.1)
            a.kill()
            proxy.restore()

            async def drained() -> bool:
                rows = await pool.fetchval("SELECT count(*) FROM newsletters")
                return bool(rows == len(sent)
                            and await pending_total(redis, keys, PERSIST_GROUP) == 0)

            await eventually(drained, timeout=90, what="everything written by b", procs=(b,),
                             interval=0.1)
            assert scrape(port, "livefeed_entries_claimed_total") >= 100

            async def all_bs() -> bool:  # a's leases expired, b took its partitions
                held = await leases.owners(redis, keys, PERSIST_GROUP)
                return len(held) == keys.count and all(
                    token.startswith("b#") for token, _ in held.values())

            await eventually(all_bs, timeout=60, what="every partition held by b",
                             procs=(b,), interval=0.1)
            # Waited for off the event loop: the proxy lives on it, and b's pool close waits
            # for PostgreSQL's goodbye through the proxy (a blocked loop hung it).
            assert await anyio.to_thread.run_sync(b.terminate) == 0
            assert "did not confirm the close" not in b.output()
    got = await pool.fetch("SELECT id FROM newsletters")
    assert {r["id"] for r in got} == {e.id for e in sent}
    assert await dead_rows(redis, keys) == []

"""The consumer-group runner over many partitions with leases, on the real Redis: the
group's consumers split the partitions, a batch spans partitions, per-user order holds,
and a consumer that dies hands its partitions (and what it left pending) to the others."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from livefeed.core import redis_client
from livefeed.core.groups import GroupRunner, RunnerConfig
from livefeed.core.groupstream import Entry, GroupStream, Raw, answers_woken_reads_whole
from livefeed.core.keys import Keys
from livefeed.core.leases import PartitionLeases, Refresh

pytestmark = pytest.mark.anyio
GROUP = "fanout"
USERS = [f"user{i}" for i in range(40)]


class Recorder:
    def __init__(self, name: str, log: dict[str, list[tuple[str, str]]],
                 hold: anyio.Event | None = None) -> None:
        self.name, self.log, self.hold = name, log, hold
        self.batches = 0
        self.partitions_per_batch: list[int] = []
        self.sizes: list[int] = []

    async def handle(self, entries: Sequence[Entry]) -> dict[str, str]:
        if self.hold is not None:
            await self.hold.wait()  # a consumer that hangs holding its batch
        self.batches += 1
        self.sizes.append(len(entries))
        self.partitions_per_batch.append(len({e.id.split("/")[0] for e in entries}))
        for e in entries:
            self.log[e.user].append((e.event_id, self.name))
        return {}


async def post(r: Any, keys: Keys, per_user: int, start: int = 0) -> None:
    pipe = r.pipeline(transaction=False)
    for n in range(start, start + per_user):
        for user in USERS:
            pipe.xadd(keys.ingest_of(user), {"event_id": f"{user}-{n}", "user": user,
                                             "data": b"{}"})
    await pipe.execute()


def runner(r: Any, keys: Keys, name: str, handler: Any, lease_ms: int = 600) -> GroupRunner:
    cfg = RunnerConfig(batch_size=50, block_ms=50, claim_idle_ms=60_000, trim_every_s=None,
                       backoff_base_s=0.05, drain_timeout_s=5)
    return GroupRunner(r, keys, GROUP, handler, consumer=name, config=cfg,
                       leases=PartitionLeases(r, keys, GROUP, name, lease_ms=lease_ms))


async def until(cond: Any, timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.05)


def check_each_once_in_order(log: dict[str, list[tuple[str, str]]], per_user: int) -> None:
    for user in USERS:
        got = [eid for eid, _ in log[user]]
        assert got == [f"{user}-{n}" for n in range(per_user)], user


async def test_two_consumers_split_the_partitions_and_keep_per_user_order(
        redis: Any, keys: Keys) -> None:
    log: dict[str, list[tuple[str, str]]] = defaultdict(list)
    a, b = Recorder("a", log), Recorder("b", log)
    ra, rb = runner(redis, keys, "a", a), runner(redis, keys, "b", b)
    stop_a, stop_b = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ra.run, stop_a)
        await until(lambda: len(ra.stream.owned) == 16)
        tg.start_soon(rb.run, stop_b)
        await until(lambda: len(rb.stream.owned) == 8 and len(ra.stream.owned) == 8)
        assert set(ra.stream.owned).isdisjoint(rb.stream.owned)
        await post(redis, keys, 30)
        await until(lambda: sum(len(v) for v in log.values()) == 30 * len(USERS))
        stop_a.set()
        stop_b.set()
    check_each_once_in_order(log, 30)
    # Each user was handled by one consumer only, the owner of its partition.
    assert all(len({who for _, who in log[u]}) == 1 for u in USERS)
    assert a.batches and b.batches
    # One batch is drawn from several partitions (one INSERT, acks per partition).
    assert max(a.partitions_per_batch + b.partitions_per_batch) > 1


async def test_a_consumer_that_dies_holding_a_batch_hands_its_partitions_over(
        redis: Any, keys: Keys) -> None:
    log: dict[str, list[tuple[str, str]]] = defaultdict(list)
    survivor = Recorder("survivor", log)
    stuck = anyio.Event()  # never set: the victim hangs inside its first batch
    victim = Recorder("victim", log, hold=stuck)
    rs, rv = runner(redis, keys, "survivor", survivor), runner(redis, keys, "victim", victim)
    stop_s = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(rs.run, stop_s)
        async with anyio.create_task_group() as victim_tg:
            victim_tg.start_soon(rv.run, anyio.Event())
            await until(lambda: len(rv.stream.owned) == 8 and len(rs.stream.owned) == 8)
            owned_by_victim = set(rv.stream.owned)
            await post(redis, keys, 10)
            await until(lambda: bool(rv._held))  # it holds a batch it will never finish
            # The victim dies: no release, no more heartbeats (like SIGKILL).
            victim_tg.cancel_scope.cancel()
        await until(lambda: sum(len(v) for v in log.values()) == 10 * len(USERS))
        assert owned_by_victim <= set(rs.stream.owned)
        await post(redis, keys, 5, start=10)
        await until(lambda: sum(len(v) for v in log.values()) == 15 * len(USERS))
        stop_s.set()
    check_each_once_in_order(log, 15)
    assert victim.batches == 0
    for p in range(16):
        assert (await redis.xpending(keys.ingest(p), GROUP))["pending"] == 0


class ScriptedLeases:
    """Leases whose refreshes return a script of outcomes (no Redis)."""

    refresh_every_s = 60.0

    def __init__(self, script: list[Refresh]) -> None:
        self.script = script
        self.owned: set[int] = set()

    async def refresh(self) -> Refresh:
        change = self.script.pop(0)
        self.owned = set(change.owned)
        return change


async def test_a_surplus_partition_assigned_back_is_read_again(redis: Any, keys: Keys) -> None:
    """A partition marked surplus (another consumer joined) but still busy here, then
    assigned back (that consumer left) before it was handed over: it is read again."""
    leases = ScriptedLeases([
        Refresh(owned={0, 1}, gained={0, 1}, lost=set(), surplus=set()),
        Refresh(owned={0, 1}, gained=set(), lost=set(), surplus={1}),
        Refresh(owned={0, 1}, gained=set(), lost=set(), surplus=set()),
    ])
    r = GroupRunner(redis, keys, GROUP, Recorder("x", defaultdict(list)), consumer="x",
                    leases=leases)  # type: ignore[arg-type]
    await r._renew_leases()
    await r._apply_leases()  # takes both over
    assert r.stream.owned == [0, 1]
    await r._renew_leases()
    assert r.stream.owned == [0]  # not read while it is on its way out
    await r._renew_leases()
    assert r.stream.owned == [0, 1]


async def test_a_lease_lost_and_won_back_in_one_refresh_is_taken_over_again(
        redis: Any, keys: Keys) -> None:
    leases = ScriptedLeases([
        Refresh(owned={2}, gained={2}, lost=set(), surplus=set()),
        Refresh(owned={2}, gained={2}, lost={2}, surplus=set()),
    ])
    r = GroupRunner(redis, keys, GROUP, Recorder("x", defaultdict(list)), consumer="x",
                    leases=leases)  # type: ignore[arg-type]
    await r._renew_leases()
    await r._apply_leases()
    assert r.stream.owned == [2]
    await r._renew_leases()
    assert r.stream.owned == [] and r._to_take == {2}  # someone may have claimed meanwhile
    await r._apply_leases()
    assert r.stream.owned == [2] and r._to_take == set()


async def test_a_burst_that_wakes_an_idle_consumer_comes_in_batches_of_the_batch_size(
        redis: Any, keys: Keys) -> None:
    """The blocked read returns the burst's first entry (one partition); a read shared
    among that one partition would take a whole batch from each of the 16 streams. What
    a read returns beyond the batch size is carried, a batch at a time, in order."""
    log: dict[str, list[tuple[str, str]]] = defaultdict(list)
    rec = Recorder("c", log)
    run = runner(redis, keys, "c", rec)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.run, stop)
        await until(lambda: len(run.stream.owned) == 16)
        await anyio.sleep(0.2)  # blocked on an empty group
        await post(redis, keys, 20)
        await until(lambda: sum(len(v) for v in log.values()) == 20 * len(USERS))
        stop.set()
    check_each_once_in_order(log, 20)
    assert max(rec.sizes) <= 50, rec.sizes
    # Carried and topped-up reads fill their batches: no trail of small ones.
    assert len(rec.sizes) <= 20 * len(USERS) // 50 + 4, rec.sizes
    for p in range(16):
        assert (await redis.xpending(keys.ingest(p), GROUP))["pending"] == 0


async def _woken_read_streams(url: str, r: Any, keys: Keys) -> int:
    """How many streams the server puts in its answer to a blocked XREADGROUP on two
    streams that one script wakes by appending to both."""
    a, b = keys.ingest(0), keys.ingest(1)
    for key in (a, b):
        await r.xgroup_create(key, "probe", id="$", mkstream=True)
    reader = redis_client.connect(url, blocking=True)
    try:
        async with anyio.create_task_group() as tg:
            got: list[Any] = []

            async def read() -> None:
                got.extend(await reader.xreadgroup("probe", "c", {a: ">", b: ">"}, count=10,
                                                   block=5_000))

            tg.start_soon(read)
            await anyio.sleep(0.2)  # blocked
            await r.eval("redis.call('XADD', KEYS[1], '*', 'n', 1) "
                         "redis.call('XADD', KEYS[2], '*', 'n', 2)", 2, a, b)
    finally:
        await reader.aclose()
    await r.delete(a, b)
    return len(got)


@pytest.mark.parametrize("server", ["redis", "redis62", "valkey"])
async def test_the_probe_says_how_the_server_answers_a_woken_read(
        server: str, redis_url: str, keys: Keys, request: pytest.FixtureRequest) -> None:
    """Redis 7.0 (and 6.2) answers a woken XREADGROUP with the stream that woke it only;
    Redis 7.2 and Valkey run it again and answer with every stream that has entries. The
    probe (the server's version) must say what the server does."""
    url = redis_url if server == "redis" else request.getfixturevalue(f"{server}_url")
    r = redis_client.connect(url)
    try:
        whole = await answers_woken_reads_whole(r)
        streams = await _woken_read_streams(url, r, keys)
    finally:
        await redis_client.delete_keys(r, keys)
        await r.aclose()
    assert streams == (2 if whole else 1)
    if server != "redis":  # the shared server is whichever answers: either kind
        assert whole is (server == "valkey")


@pytest.mark.parametrize("server", ["redis", "redis62", "valkey"])
async def test_a_consumer_that_does_not_linger_handles_a_requests_partitions_as_one_batch(
        server: str, redis_url: str, keys: Keys, request: pytest.FixtureRequest) -> None:
    """One ingest request lands on several partitions at once. Redis 7.0 and 6.2 answer the
    blocked read with the partition that woke it only: a consumer that does not linger
    (fanout) reads the others at once, without blocking. Valkey (and Redis 7.2+) answer
    with the whole request, and a read more would only delay its fan-out by a round trip.
    Either way the request is one batch."""
    url = redis_url if server == "redis" else request.getfixturevalue(f"{server}_url")
    r = redis_client.connect(url)
    log: dict[str, list[tuple[str, str]]] = defaultdict(list)
    rec = Recorder("c", log)
    run = runner(r, keys, "c", rec)
    reads: list[tuple[int, int | None]] = []  # (batches handled, block_ms) per read of new
    ack_and_read = run.stream.ack_and_read

    async def counting(ack: Any, cursor: str, count: int, block_ms: int | None) -> Any:
        if cursor == ">":
            reads.append((rec.batches, block_ms))
        return await ack_and_read(ack, cursor, count, block_ms)

    run.stream.ack_and_read = counting  # type: ignore[method-assign]
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.run, stop)
            await until(lambda: len(run.stream.owned) == 16)
            await post(r, keys, 1)
            await until(lambda: sum(len(v) for v in log.values()) == len(USERS))
            await anyio.sleep(0.2)  # blocked on an empty group
            woken = rec.batches
            # One request of 10 events on 10 partitions, as ingest appends them: at once.
            request = list({keys.partition_of(u): u for u in USERS}.values())[:10]
            pipe = r.pipeline(transaction=True)
            for user in request:
                pipe.xadd(keys.ingest_of(user), {"event_id": f"{user}-1", "user": user,
                                                 "data": b"{}"})
            await pipe.execute()
            await until(lambda: sum(len(v) for v in log.values()) == len(USERS) + 10)
            stop.set()
    finally:
        await redis_client.delete_keys(r, keys)
        await r.aclose()
    assert all([e for e, _ in log[u]] == [f"{u}-0", f"{u}-1"] for u in request)
    assert rec.sizes[woken:] == [10]  # one batch, not the woken partition and then the rest
    assert rec.partitions_per_batch[woken] == 10
    whole = run.stream.whole_wakes
    if server != "redis":  # the shared server is whichever answers: either kind
        assert whole is (server == "valkey")
    # Idle, the runner only blocks; the request woke one of those reads. Before its batch
    # was handled, a partial answer took one read more, without blocking.
    read_on = [block for batches, block in reads if batches == woken and block is None]
    assert read_on == ([] if whole else [None])


async def test_a_read_says_whether_entries_are_left_waiting(redis: Any, keys: Keys) -> None:
    stream = GroupStream(redis, keys, GROUP, "c")
    await stream.ensure_groups()
    await post(redis, keys, 3)  # 40 users over 16 partitions: 3 entries or more in each
    got = await stream.read(">", 16, None)  # 1 from each partition: more is waiting
    assert len(got) == 16 and stream.more
    rest = await stream.read(">", 10_000, None)
    assert len(got) + len(rest) == 3 * len(USERS) and not stream.more


async def test_carried_entries_of_a_lost_lease_are_left_to_the_new_owner(
        redis: Any, keys: Keys) -> None:
    """What a read carried beyond its batch, for a partition whose lease was lost, is not
    handled here (late, after the new owner's): it is dropped, unheld, and stays pending
    for the new owner's take-over claim. Partitions still leased keep their order."""
    leases = ScriptedLeases([])
    leases.owned = {0}
    r = GroupRunner(redis, keys, GROUP, Recorder("x", defaultdict(list)), consumer="x",
                    leases=leases)  # type: ignore[arg-type]
    carried = [Raw(ref, {}) for ref in ("0/1-0", "1/1-0", "0/2-0", "1/2-0", "0/3-0")]
    r._carry = list(carried)
    r._held = {c.id for c in carried}
    assert [c.id for c in r._take_carry(2)] == ["0/1-0", "0/2-0"]
    assert [c.id for c in r._carry] == ["0/3-0"]
    assert r._held == {"0/1-0", "0/2-0", "0/3-0"}


async def test_a_read_after_the_partitions_are_lost_returns_though_the_last_one_woke(
        redis: Any, keys: Keys) -> None:
    """fanout reads on after a read that woke from blocking. Once its leases are lost (a
    Redis outage longer than a lease), a read has no partition to read and returns
    nothing at once: it must not read on forever on the stale `woke` of the read before,
    or the runner never gets back to winning its partitions again."""
    log: dict[str, list[tuple[str, str]]] = defaultdict(list)
    run = GroupRunner(redis, keys, GROUP, Recorder("c", log), consumer="c",
                      config=RunnerConfig(batch_size=50, block_ms=50, claim_idle_ms=60_000,
                                          trim_every_s=None))
    await run.stream.ensure_groups()
    got: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def woken_read() -> None:
            got.extend(await run._read(50, 5_000))

        tg.start_soon(woken_read)
        await anyio.sleep(0.2)  # blocked
        await post(redis, keys, 1)
    assert got and run.stream.woke is False  # woke, then read on without blocking
    run.stream.woke = True  # as after a woken read that took the whole request
    run.stream.owned = []  # the leases lapsed
    with anyio.fail_after(5):
        assert await run._read(50, 50) == []

"""The consumer-group runner against real Redis 7 and the embedded Redis 6.2."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY

from livefeed.core import redis_client
from livefeed.core.errors import RetryBatch
from livefeed.core.groups import LINGER_POLL_S, GroupRunner, RunnerConfig
from livefeed.core.groupstream import Entry, parse_autoclaim, ref
from livefeed.core.keys import Keys
from tests.helpers.waiting import eventually

# Marked here, not only by conftest after collection: anyio's plugin otherwise rebuilds the
# callspec of parametrized async tests and drops their parameters.
pytestmark = pytest.mark.anyio
GROUP = "persist"
both = pytest.mark.parametrize("backend", ["redis7", "redis6.2"], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest, redis_url: str) -> tuple[str, str]:
    """(version, url): the test Redis (7 on a standard machine; whatever the
    tests were given otherwise) or the embedded 6.2."""
    if request.param == "redis7":
        return "", redis_url
    return "6.2", request.getfixturevalue("redis62_url")


@pytest.fixture
async def r(backend: tuple[str, str], keys: Keys) -> AsyncIterator[Any]:
    """A client on the backend's Redis; this test's keys are deleted afterwards."""
    version, url = backend
    client = redis_client.connect(url)
    info = await client.info("server")
    assert info["redis_version"].startswith(version)
    try:
        yield client
    finally:
        await redis_client.delete_keys(client, keys)
        await client.aclose()


class Recorder:
    """A handler that records batches; fails `poison` event ids; raises while `down`."""

    def __init__(self, poison: Sequence[str] = ()) -> None:
        self.batches: list[list[str]] = []
        self.poison = set(poison)
        self.down = False
        self.failure: Callable[[], Exception] = lambda: ConnectionRefusedError("database down")
        self.attempts = 0
        self.hang = False

    @property
    def handled(self) -> list[str]:
        return [i for b in self.batches for i in b]

    async def handle(self, entries: Sequence[Entry]) -> dict[str, str]:
        self.attempts += 1
        if self.hang:
            await anyio.sleep_forever()
        if self.down:
            raise self.failure()
        self.batches.append([e.event_id for e in entries])
        return {e.id: f"cannot store {e.event_id}" for e in entries if e.event_id in self.poison}


def cfg(**kw: Any) -> RunnerConfig:
    base: dict[str, Any] = dict(batch_size=10, block_ms=50, claim_idle_ms=200,
                                max_deliveries=3, trim_every_s=None, backoff_base_s=0.05,
                                backoff_cap_s=0.2, drain_timeout_s=5)
    return RunnerConfig(**{**base, **kw})


async def add(r: Any, keys: Keys, *event_ids: str) -> list[str]:
    out = []
    for eid in event_ids:
        sid = await r.xadd(keys.ingest_of("u"),
                           {"event_id": eid, "user": "u", "data": b'{"x":1}'})
        out.append(sid.decode())
    return out


async def read_as(r: Any, keys: Keys, consumer: str, count: int) -> list[str]:
    """Deliver `count` new entries to `consumer` and never ack them (a consumer that dies)."""
    reply = await r.xreadgroup(GROUP, consumer, {keys.ingest_of("u"): ">"}, count=count)
    return [i.decode() for i, _ in reply[0][1]] if reply else []


async def ensure(r: Any, keys: Keys) -> None:
    await r.xgroup_create(keys.ingest_of("u"), GROUP, id="0", mkstream=True)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(f"livefeed_{name}_total", {"group": GROUP}) or 0.0


async def pending_count(r: Any, keys: Keys) -> int:
    return int((await r.xpending(keys.ingest_of("u"), GROUP))["pending"])


class Running:
    """A runner in a task group; `stop()` sets its stopping event and waits for it."""

    def __init__(self, runner: GroupRunner, tg: Any) -> None:
        self.runner, self.stopping, self.done = runner, anyio.Event(), anyio.Event()
        tg.start_soon(self._run)

    async def _run(self) -> None:
        try:
            await self.runner.run(self.stopping)
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.stopping.set()
        with anyio.fail_after(20):
            await self.done.wait()


def runner(r: Any, keys: Keys, handler: Any, consumer: str, **kw: Any) -> GroupRunner:
    return GroupRunner(r, keys, GROUP, handler, consumer=consumer, config=cfg(**kw))


def failing_reads(run: GroupRunner, monkeypatch: pytest.MonkeyPatch, *,
                  reply_lost: bool) -> list[int]:
    """Every third read of `run` fails with a dropped connection: before Redis runs it,
    or (`reply_lost`) after, so what it delivered is pending and its reply never came.
    Returns a one-item list counting the reads."""
    real = run.stream.ack_and_read
    calls = [0]

    async def read(ack: Sequence[str], *args: Any) -> Any:
        calls[0] += 1
        fail = calls[0] % 3 == 0
        if fail and not reply_lost:
            raise ConnectionError("connection reset by peer")
        got = await real(ack, *args)
        if fail:
            raise ConnectionError("connection reset by peer")
        return got

    monkeypatch.setattr(run.stream, "ack_and_read", read)
    return calls


@both
async def test_own_pending_entries_come_first_then_acked_and_consumer_leaves(
    r: Any, keys: Keys
) -> None:
    await ensure(r, keys)
    await add(r, keys, "a", "b", "c")
    assert len(await read_as(r, keys, "c1", 2)) == 2  # delivered to c1, which then "crashed"
    await add(r, keys, "d")
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, rec, "c1", claim_idle_ms=60_000), tg)
        await eventually(lambda: _true(len(rec.handled) == 4))
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await run.stop()
    assert rec.batches[0] == ["a", "b"]  # its own pending, before anything new
    assert sorted(rec.handled) == ["a", "b", "c", "d"]
    assert await r.xinfo_consumers(keys.ingest_of("u"), GROUP) == []  # left the group: owns nothing
    # retention needs every group to exist: the runner created both
    names = {g["name"] for g in await r.xinfo_groups(keys.ingest_of("u"))}
    assert names == {b"persist", b"fanout"}


@both
async def test_claims_stale_entries_of_a_dead_consumer(r: Any, keys: Keys) -> None:
    await ensure(r, keys)
    await add(r, keys, *[f"e{i}" for i in range(25)])
    dead = await read_as(r, keys, "dead", 25)
    claimed_before = metric("entries_claimed")
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, rec, "alive", claim_idle_ms=100), tg)
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await run.stop()
    assert sorted(rec.handled) == sorted(f"e{i}" for i in range(25))
    assert len(dead) == 25 and metric("entries_claimed") - claimed_before == 25


@both
async def test_poison_entry_is_dead_lettered_after_max_deliveries(r: Any, keys: Keys) -> None:
    await ensure(r, keys)
    ids = await add(r, keys, "ok1", "bad", "ok2")
    dead_before = metric("dead_letters")
    rec = Recorder(poison=["bad"])
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, rec, "c1", max_deliveries=3, claim_idle_ms=100), tg)
        await eventually(lambda: _is(r.xlen(keys.dead(keys.partition_of("u"))), 1))
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await run.stop()
    assert rec.handled.count("ok1") == 1 and rec.handled.count("ok2") == 1
    assert rec.handled.count("bad") == 3  # tried max_deliveries times, then given up
    [(_, fields)] = await r.xrange(keys.dead(keys.partition_of("u")))
    assert fields[b"source_id"].decode() == ref(keys.partition_of("u"), ids[1])
    assert fields[b"group"] == b"persist" and fields[b"consumer"] == b"c1"
    assert fields[b"error"] == b"cannot store bad"
    assert fields[b"deliveries"] == b"3" and fields[b"data"] == b'{"x":1}'
    assert fields[b"event_id"] == b"bad" and int(fields[b"failed_at_ms"]) > 0
    assert metric("dead_letters") - dead_before == 1


@both
async def test_malformed_and_worn_out_entries_skip_the_handler(r: Any, keys: Keys) -> None:
    await ensure(r, keys)
    await r.xadd(keys.ingest_of("u"), {"junk": "1"})
    [worn] = await add(r, keys, "worn")
    await read_as(r, keys, "c1", 2)
    for _ in range(2):  # delivered three times already, never settled (crashed consumers)
        await r.xreadgroup(GROUP, "c1", {keys.ingest_of("u"): "0"})
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, rec, "c1", max_deliveries=2, claim_idle_ms=100), tg)
        await eventually(lambda: _is(r.xlen(keys.dead(keys.partition_of("u"))), 2))
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await run.stop()
    assert rec.handled == []
    dead = await r.xrange(keys.dead(keys.partition_of("u")))
    errors = {f[b"source_id"].decode(): f[b"error"].decode() for _, f in dead}
    assert errors[ref(keys.partition_of("u"), worn)].startswith("no outcome after")
    assert any(e.startswith("malformed entry: missing field(s) event_id, user, data")
               for e in errors.values())


@both
@pytest.mark.parametrize("failure", [
    lambda: RetryBatch("database down"),  # what a handler raises to say "not now"
    lambda: ConnectionRefusedError("Redis down"),  # a connection error let through
], ids=["RetryBatch", "connection-error"])
async def test_transient_failure_keeps_entries_pending_without_burning_deliveries(
    r: Any, keys: Keys, failure: Callable[[], Exception]
) -> None:
    await ensure(r, keys)
    await add(r, keys, "a", "b")
    rec = Recorder()
    rec.down = True
    rec.failure = failure
    other = Recorder()
    async with anyio.create_task_group() as tg:
        first = Running(runner(r, keys, rec, "c1", claim_idle_ms=300), tg)
        await eventually(lambda: _true(rec.attempts >= 1))
        # a second consumer would claim entries idle past 300 ms: the keepalive prevents it
        second = Running(runner(r, keys, other, "c2", claim_idle_ms=300), tg)
        await eventually(lambda: _true(rec.attempts >= 12))  # well past 300 ms of retries
        rows = await r.xpending_range(keys.ingest_of("u"), GROUP, min="-", max="+", count=10)
        assert [(x["consumer"], x["times_delivered"]) for x in rows] == [(b"c1", 1)] * 2
        assert other.handled == []
        rec.down = False
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await first.stop()
        await second.stop()
    assert rec.handled == ["a", "b"] and other.handled == []


@both
async def test_stop_leaves_an_unfinished_batch_pending(r: Any, keys: Keys) -> None:
    await ensure(r, keys)
    await add(r, keys, "a", "b")
    rec = Recorder()
    rec.hang = True
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, rec, "c1", drain_timeout_s=0.3, claim_idle_ms=60_000), tg)
        await eventually(lambda: _true(rec.attempts == 1))
        await run.stop()
    assert await pending_count(r, keys) == 2  # nothing acked that was not done
    consumers = await r.xinfo_consumers(keys.ingest_of("u"), GROUP)
    assert [(c["name"], c["pending"]) for c in consumers] == [(b"c1", 2)]


class Gated(Recorder):
    """Handles its first batch at once; from the second on, waits for `gate` (or fails
    transiently while `outage`)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.outage = False

    async def handle(self, entries: Sequence[Entry]) -> dict[str, str]:
        if self.attempts >= 1:
            if self.outage:
                self.attempts += 1
                raise self.failure()
            self.attempts += 1
            await self.gate.wait()
            self.attempts -= 1
        return await super().handle(entries)


async def owners(r: Any, keys: Keys) -> list[tuple[str, bytes, int]]:
    """(event id, consumer, deliveries) of every pending entry, in stream order."""
    rows = await r.xpending_range(keys.ingest_of("u"), GROUP, min="-", max="+", count=100)
    by_id = {i.decode(): f[b"event_id"].decode() for i, f in await r.xrange(keys.ingest_of("u"))}
    return [(by_id[x["message_id"].decode()], x["consumer"], x["times_delivered"])
            for x in rows]


@both
async def test_stop_finishes_the_prefetched_batch_and_reads_nothing_more(
    r: Any, keys: Keys
) -> None:
    await ensure(r, keys)
    ids = await add(r, keys, "a", "b", "c", "d", "e", "f")
    rec = Gated()
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, rec, "c1", batch_size=2, claim_idle_ms=60_000), tg)
        # [a b] done; [c d] in the handler; [e f] prefetched meanwhile, held by c1
        await eventually(lambda: _true(rec.attempts == 2))
        await eventually(lambda: _is(pending_count(r, keys), 4))
        assert [o[:2] for o in await owners(r, keys)] == [(e, b"c1") for e in "cdef"]
        await add(r, keys, "g", "h")
        run.stopping.set()
        rec.gate.set()
        await run.stop()
    assert rec.batches == [["a", "b"], ["c", "d"], ["e", "f"]]  # each once, in order
    assert await pending_count(r, keys) == 0  # the last acks were flushed at stop
    [group] = [g for g in await r.xinfo_groups(keys.ingest_of("u")) if g["name"] == b"persist"]
    assert group["last-delivered-id"].decode() == ids[-1]  # g, h: never read after stop
    assert await r.xinfo_consumers(keys.ingest_of("u"), GROUP) == []


@both
async def test_abandoned_and_prefetched_batches_stay_pending_for_the_restart(
    r: Any, keys: Keys
) -> None:
    await ensure(r, keys)
    await add(r, keys, "a", "b", "c", "d", "e", "f")
    rec = Gated()
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, rec, "c1", batch_size=2, claim_idle_ms=60_000,
                             drain_timeout_s=0.3), tg)
        await eventually(lambda: _true(rec.attempts == 2))
        await eventually(lambda: _is(pending_count(r, keys), 4))
        await run.stop()  # the handler never returns: abandoned after drain_timeout_s
    assert rec.batches == [["a", "b"]]
    # nothing acked that was not done, the prefetched batch neither lost nor acked
    assert await owners(r, keys) == [(e, b"c1", 1) for e in "cdef"]
    again = Recorder()
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, again, "c1", batch_size=2, claim_idle_ms=60_000), tg)
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await run.stop()
    assert again.batches == [["c", "d"], ["e", "f"]]  # own pending first (id 0), once each
    assert await r.xinfo_consumers(keys.ingest_of("u"), GROUP) == []


@both
async def test_a_prefetched_batch_is_kept_alive_while_the_handler_retries(
    r: Any, keys: Keys
) -> None:
    await ensure(r, keys)
    await add(r, keys, "a", "b", "c", "d", "e", "f")
    rec = Gated()
    rec.outage = True  # from the second batch on
    other = Recorder()
    async with anyio.create_task_group() as tg:
        first = Running(runner(r, keys, rec, "c1", batch_size=2, claim_idle_ms=300), tg)
        await eventually(lambda: _is(pending_count(r, keys), 4))
        second = Running(runner(r, keys, other, "c2", batch_size=2, claim_idle_ms=300), tg)
        await eventually(lambda: _true(rec.attempts >= 14))  # well past 300 ms of retries
        # c1 holds the failing batch and the prefetched one; c2 claimed neither
        assert await owners(r, keys) == [(e, b"c1", 1) for e in "cdef"]
        assert other.handled == []
        rec.outage = False
        rec.gate.set()
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await first.stop()
        await second.stop()
    assert rec.batches == [["a", "b"], ["c", "d"], ["e", "f"]] and other.handled == []


@both
@pytest.mark.parametrize("reply_lost", [False, True], ids=["before", "reply-lost"])
async def test_reads_that_fail_lose_no_entry_and_keep_the_order(
    r: Any, keys: Keys, monkeypatch: pytest.MonkeyPatch, reply_lost: bool
) -> None:
    """Redis drops the connection on every third read (a prefetch, or a read carrying
    acks), before it runs the read or (`reply-lost`: a primary killed after it answered)
    after, so the entries it delivered are pending for us and nowhere else. Every entry is
    still handled, first in order, and acked; claim_idle_ms is 10 minutes, so only the
    read-back of our own pending entries can bring the lost ones back."""
    await ensure(r, keys)
    await add(r, keys, *[f"e{i}" for i in range(40)])
    rec = Recorder()
    run_ = runner(r, keys, rec, "c1", batch_size=4, claim_idle_ms=600_000)
    calls = failing_reads(run_, monkeypatch, reply_lost=reply_lost)
    async with anyio.create_task_group() as tg:
        run = Running(run_, tg)
        await eventually(lambda: _true(len(set(rec.handled)) == 40), timeout=20)
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await run.stop()
    assert list(dict.fromkeys(rec.handled)) == [f"e{i}" for i in range(40)]
    if not reply_lost:
        assert len(rec.handled) == 40  # a read that never ran delivered nothing twice
    assert calls[0] > 10


@both
async def test_vanished_pending_entries_are_acked_and_counted(r: Any, keys: Keys) -> None:
    """After a trim/XDEL a pending entry has no payload: on restart (own pending, id 0)
    and when claimed (Redis 7 reports deleted ids; 6.2 returns nil entries)."""
    await ensure(r, keys)
    ids = await add(r, keys, "a", "b", "c", "d", "e", "f")
    await read_as(r, keys, "me", 3)  # a b c: my own pending
    await read_as(r, keys, "dead", 3)  # d e f: a dead consumer's
    await r.xdel(keys.ingest_of("u"), ids[1], ids[4])
    before = metric("entries_vanished")
    rec = Recorder()
    async with anyio.create_task_group() as tg:
        run = Running(runner(r, keys, rec, "me", claim_idle_ms=100), tg)
        await eventually(lambda: _is(pending_count(r, keys), 0))
        await run.stop()
    assert sorted(rec.handled) == ["a", "c", "d", "f"]
    assert metric("entries_vanished") - before == 2


def test_parse_autoclaim_both_reply_shapes() -> None:
    v62 = parse_autoclaim([b"0-0", [(b"1-0", {b"k": b"v"}), (None, None)]], 3)
    assert [e.id for e in v62.entries] == ["3/1-0"] and v62.nil_seen and v62.deleted == []
    v7 = parse_autoclaim([b"5-0", [(b"1-0", {b"k": b"v"})], [b"2-0"]], 0)
    assert v7.cursor == "5-0" and v7.deleted == ["0/2-0"] and not v7.nil_seen


async def _true(value: bool) -> bool:
    return value


async def _is(awaitable: Any, expected: Any) -> bool:
    return bool(await awaitable == expected)



@both
async def test_a_lingering_batch_is_polled_not_read_on_every_append(
        r: Any, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """persist lingers for a partial batch to fill: it reads what arrived every
    LINGER_POLL_S, not once per append (each ingest request), and a batch that fills goes
    within a poll, long before the linger ends."""
    await ensure(r, keys)
    rec = Recorder()
    run = runner(r, keys, rec, "me", batch_size=30, linger_ms=3000)
    real = run.stream.ack_and_read
    reads: list[float] = []

    async def counted(*args: Any) -> Any:
        reads.append(anyio.current_time())
        return await real(*args)

    monkeypatch.setattr(run.stream, "ack_and_read", counted)
    async with anyio.create_task_group() as tg:
        running = Running(run, tg)
        await anyio.sleep(0.2)  # blocked on an empty group
        start = anyio.current_time()
        for i in range(30):  # one append every 10 ms, as ingest requests come
            await add(r, keys, f"e{i}")
            await anyio.sleep(0.01)
        await eventually(lambda: _true(len(rec.handled) == 30))
        took = anyio.current_time() - start
        await running.stop()
    assert rec.batches == [[f"e{i}" for i in range(30)]]
    assert took < 2.0  # the full batch went within a poll, not after the 3 s linger
    during = [t for t in reads if start <= t <= start + took]
    assert len(during) <= took / LINGER_POLL_S + 3, (len(during), took)

"""The consumer-group runner: read batches, hand them to a handler, ack what was done.

Invariants: an entry is acked only after its handler succeeded (or it was dead-lettered
in the same MULTI); a transient failure (database or Redis unreachable) is retried in
process without re-reading, so it burns no delivery count; a restarted consumer reads its
own pending entries before new ones. A prefetched batch is an ordinary pending entry of
ours until handled: kept alive, never acked unhandled, re-read by id 0 after a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import redis.exceptions

from livefeed.core import deadletters, metrics, redis_client, retention
from livefeed.core.errors import REDIS_UNAVAILABLE, RetryBatch
from livefeed.core.groupstream import Batch, Entry, GroupStream, Raw, sort_batch, split_ref
from livefeed.core.keys import Keys
from livefeed.core.leases import PartitionLeases
from livefeed.core.redis_client import RedisClient
from livefeed.core.settings import Resolved, Settings

logger = logging.getLogger(__name__)

# Failures that say nothing about the entries: retry the same batch later. The handler
# says so with RetryBatch; Redis being away (fanout's handler talks to Redis) says it too.
RETRY_LATER = (RetryBatch, *REDIS_UNAVAILABLE)
# A lingering consumer (persist, LIVEFEED_FLUSH_MS) reads what arrived this often while its
# partial batch fills: a batch that fills goes at most this much later.
LINGER_POLL_S = 0.05


_DOWN: Any = object()


class Permanent(str):
    """A handler's error for an entry no redelivery can fix (the database refuses its
    data): the entry is dead-lettered at once, not after max_deliveries."""


class Handler(Protocol):
    async def handle(self, entries: Sequence[Entry]) -> dict[str, str]:
        """Do the work of `entries`; return {entry id: error} for poison entries. An error
        that is a `Permanent` dead-letters its entry now; any other, once the entry has
        been delivered max_deliveries times (it is redelivered until then).

        Raise RetryBatch (or let a Redis connection error through) to have the whole
        batch retried later, burning no delivery. A handler may also define
        `prepare(entries) -> None`: CPU work for the next batch, called while the current
        one is handled; `handle` must work on unprepared entries too.
        """
        ...


def _ranges(partitions: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (for logs)."""
    out: list[str] = []
    for p in sorted(partitions):
        if out and "-" not in out[-1].split(",")[-1] and int(out[-1]) == p - 1:
            out[-1] = f"{out[-1]}-{p}"
        elif out and "-" in out[-1] and int(out[-1].rsplit("-", 1)[1]) == p - 1:
            out[-1] = f"{out[-1].rsplit('-', 1)[0]}-{p}"
        else:
            out.append(str(p))
    return ",".join(out)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class RunnerConfig:
    batch_size: int = 100
    linger_ms: int = 0  # wait up to this long for a batch to fill (persist: flush_ms)
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    dead_maxlen: int = 100_000
    trim_every_s: float | None = 5.0
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    drain_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings, *, linger: bool) -> RunnerConfig:
        """`linger`: let batches fill for up to LIVEFEED_FLUSH_MS (persist), or hand over
        whatever one read returned (fanout: latency first)."""
        return cls(
            batch_size=settings.batch_size,
            linger_ms=settings.flush_ms if linger else 0,
            block_ms=1000,
            claim_idle_ms=settings.claim_idle_ms,
            max_deliveries=settings.max_deliveries,
            dead_maxlen=settings.dead_maxlen,
            drain_timeout_s=settings.drain_timeout_s,
        )

    @property
    def claim_every_s(self) -> float:
        return min(max(self.claim_idle_ms / 2000, 0.05), 5.0)

    @property
    def keepalive_s(self) -> float:
        return max(self.claim_idle_ms / 3000, 0.02)


@contextlib.asynccontextmanager
async def consumer_clients(settings: Resolved) -> AsyncIterator[tuple[RedisClient, RedisClient]]:
    """A consumer role's Redis clients: one for commands, one without socket timeout for
    its blocking reads (see core.redis_client); closed on exit."""
    client = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster)
    reader = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster,
                                  blocking=True)
    try:
        yield client, reader
    finally:
        await reader.aclose()
        await client.aclose()


class GroupRunner:
    """Runs one consumer of `group` on the ingest stream until `stopping` is set.

    Redis work overlaps the handler's: while batch N is handled, the next batch is read
    (prefetched) in the same round trip as the ack of batch N-1; a done batch's ack
    travels with the next read. Entries delivered to us and not yet through `_process`
    (the batch in the handler, the prefetched one) are kept alive so no one claims them.
    """

    def __init__(self, redis: RedisClient, keys: Keys, group: str, handler: Handler, *,
                 consumer: str | None = None, reader: RedisClient | None = None,
                 config: RunnerConfig | None = None, cluster: bool = False,
                 leases: PartitionLeases | None = None) -> None:
        """`leases`: share the partitions with the group's other consumers (each partition
        is read by its lease holder only); None: read every partition."""
        self.group = group
        self.handler = handler
        self.config = config or RunnerConfig()
        self.keys = keys
        self.leases = leases
        self.stream = GroupStream(redis, keys, group, consumer or default_consumer_name(),
                                  reader=reader, cluster=cluster,
                                  owned=() if leases is not None else None)
        self._lease_lock = anyio.Lock()
        self._to_take: set[int] = set()  # leases won, partitions not taken over yet
        self._taken: set[int] = set()  # partitions taken over (read while their lease holds)
        self._surplus: set[int] = set()  # leases held, partitions assigned elsewhere
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._stopping = anyio.Event()
        self._leases_ready = anyio.Event()
        self._held: set[str] = set()  # delivered to us, not yet settled: kept alive
        self._to_ack: list[str] = []  # done; acked with the next read (or flushed)
        self._next: Batch | None = None  # prefetched: delivered to us, not yet handled
        # Read beyond a batch (a read over many partitions may return up to one COUNT from
        # each): handled, a batch at a time, before anything is read again.
        self._carry: list[Raw] = []
        # A read of new entries failed: Redis may have delivered entries to us whose reply
        # never came (a connection lost, a primary killed after it answered). They are in
        # our pending list and nowhere else; they are read back before anything new.
        self._lost_read = False
        # Prefetch only while the handler succeeds: a consumer whose database is down
        # holds one batch, not two, and leaves the rest to the other consumers.
        self._healthy = False
        self._abandoned = False  # drain_timeout_s passed after stop: start no more work
        self._work: anyio.CancelScope | None = None

    @classmethod
    def for_role(cls, settings: Resolved, keys: Keys, group: str, handler: Handler,
                 clients: tuple[RedisClient, RedisClient], *, name: str | None,
                 partitions: Sequence[int] | None, linger: bool) -> GroupRunner:
        """The runner of a `livefeed consumer` process: it shares the group's partitions
        through leases, or owns `partitions` (`--own-partitions`)."""
        client, reader = clients
        consumer = name or default_consumer_name()
        return cls(client, keys, group, handler, consumer=consumer, reader=reader,
                   config=RunnerConfig.from_settings(settings, linger=linger),
                   cluster=settings.redis_cluster,
                   leases=PartitionLeases(client, keys, group, consumer,
                                          lease_ms=settings.lease_ms, static=partitions))

    @property
    def consumer(self) -> str:
        return self.stream.consumer

    async def run(self, stopping: anyio.Event) -> None:
        self._stopping = stopping
        logger.info("consumer %s of group %s starting", self.consumer, self.group)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keepalive)
            tg.start_soon(self._drain_guard)
            if self.leases is not None:
                tg.start_soon(self._lease_loop)
            try:
                await self._consume()
            finally:
                tg.cancel_scope.cancel()
        await self._release()

    async def _consume(self) -> None:
        stopping = self._stopping
        if self.leases is not None:
            while await self._safely(self._renew_leases) is _DOWN:
                if stopping.is_set():
                    return
            self._leases_ready.set()
        while await self._safely(self.stream.ensure_groups) is _DOWN:
            if stopping.is_set():
                return
        # Our own pending entries first: a restart resumes its unfinished work. (A partition
        # taken over through its lease has all its pending entries claimed, ours included.)
        if self.leases is None:
            for partition in list(self.stream.owned):
                while await self._safely(self._finish_own, partition) is _DOWN:
                    if stopping.is_set():
                        return
        while not stopping.is_set():
            if self._lost_read and await self._safely(self._reread_own) is _DOWN:
                continue
            await self._safely(self._maintain)
            if self._next is not None:
                batch, self._next = self._next, None
                if not batch.more:
                    raws = await self._linger(batch.raws)
                    if len(raws) > len(batch.raws):
                        batch = sort_batch(raws, self._more)
            else:
                raws = await self._safely(self._collect)
                if raws is _DOWN or not raws:
                    continue
                batch = sort_batch(raws, self._more)
            await self._safely(self._process, batch, False)
        # Delivered to us before the stop: finish it rather than leave it waiting for a
        # restart or a claim (it is left pending if the drain time runs out).
        while not self._abandoned and (self._next is not None or self._carry):
            if self._next is not None:
                batch, self._next = self._next, None
            else:
                batch = sort_batch(self._take_carry(self.config.batch_size))
            await self._safely(self._process, batch, False)
        await self._safely(self._flush_acks)

    async def _safely(self, step: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`step(*args)`'s result; if Redis is away, log, wait (interruptibly), return _DOWN."""
        try:
            return await step(*args)
        except REDIS_UNAVAILABLE as exc:
            logger.warning("group %s: Redis unavailable (%s); retrying", self.group, exc)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            logger.warning("group %s: stream or group vanished; recreating", self.group)
            with contextlib.suppress(*REDIS_UNAVAILABLE):
                await self.stream.ensure_groups()
            return _DOWN
        with anyio.move_on_after(1.0):
            await self._stopping.wait()
        return _DOWN

    async def _reread_own(self) -> None:
        """After a failed read: handle our own pending entries of every owned partition,
        oldest first, before reading new ones, so an entry delivered by a read whose reply
        was lost is neither left for a claim (`claim_idle_ms` later) nor handled after newer
        entries of its user. What was read ahead (carried, prefetched) is pending too: it
        is dropped here and read back in order."""
        await self._flush_acks(strict=True)  # done entries are not read back
        ahead = [r.id for r in self._carry] + ([r.id for r in self._next.raws]
                                               if self._next is not None else [])
        self._carry, self._next = [], None
        self._held.difference_update(ahead)
        for partition in list(self.stream.owned):
            await self._finish_own(partition)
        self._lost_read = False

    async def _finish_own(self, partition: int) -> None:
        """Handle our own pending entries of `partition`, oldest first."""
        after = "0"
        while not self._stopping.is_set():
            own = await self.stream.read_own(partition, after, self.config.batch_size)
            if not own:
                return
            after = split_ref(own[-1].id)[1]
            self._held.update(r.id for r in own)
            await self._process(sort_batch(own), True)

    async def _lease_loop(self) -> None:
        """Heartbeat and renew the leases on a clock of their own: a batch stuck on a down
        database must not let them lapse (another consumer would claim it mid-batch)."""
        assert self.leases is not None
        await self._leases_ready.wait()
        while True:
            await anyio.sleep(self.leases.refresh_every_s)
            try:
                await self._renew_leases()
            except REDIS_UNAVAILABLE as exc:
                logger.warning("group %s: lease renewal failed: %s", self.group, exc)

    async def _renew_leases(self) -> None:
        """Renew what we hold, win what is ours and free; the main loop takes the won
        partitions over and hands the surplus ones over (`_apply_leases`)."""
        assert self.leases is not None
        async with self._lease_lock:
            change = await self.leases.refresh()
        if change.lost:
            logger.warning("group %s: partitions %s taken over by another consumer",
                           self.group, _ranges(change.lost))
        # A lease that lapsed (Redis was away longer than a lease, or lost it) and was won
        # back by this same refresh is in both sets: it must be taken over again.
        self._taken -= change.lost
        self._to_take = (self._to_take - change.lost) | change.gained
        self._surplus = change.surplus
        self._sync_owned()

    def _sync_owned(self) -> None:
        """Read exactly the partitions whose lease we hold, that we took over, and that are
        not on their way to another consumer (a surplus one assigned back to us is read
        again)."""
        assert self.leases is not None
        self.stream.owned = sorted((self.leases.owned & self._taken) - self._surplus)
        metrics.PARTITIONS_OWNED.labels(self.group).set(len(self.stream.owned))

    async def _apply_leases(self) -> None:
        """Take over won partitions (first what their previous owner left pending), give
        up surplus ones once nothing of theirs is in hand."""
        assert self.leases is not None
        gained = sorted(self._to_take)
        if gained:
            await self.stream.ensure_groups(gained)
            logger.info("group %s: consumer %s took partitions %s", self.group, self.consumer,
                        _ranges(gained))
        for partition in gained:
            await self._take_over(partition)
            # Only once done: a take-over cut short by Redis is tried again, not forgotten.
            self._to_take.discard(partition)
            self._taken.add(partition)
            self._sync_owned()
        if self._surplus:
            busy = {split_ref(r)[0] for r in (*self._held, *self._to_ack)}
            idle = sorted(self._surplus - busy)
            if idle:
                await self._flush_acks()
                async with self._lease_lock:
                    await self.leases.release(idle)
                self._surplus -= set(idle)
                self._taken -= set(idle)
                self._sync_owned()
                logger.info("group %s: consumer %s handed over partitions %s", self.group,
                            self.consumer, _ranges(idle))

    async def _take_over(self, partition: int) -> None:
        """Claim every entry of `partition` still pending in the group (whoever held it:
        its lease is ours now) and handle them before reading new ones."""
        start = "0-0"
        while not self._stopping.is_set():
            start = await self._claim_page(partition, 0, start)
            # Acked now, not with the next read: nothing reads them again meanwhile.
            await self._flush_acks()
            if start in ("0-0", "0"):
                break
        # Reading our own pending entries (none left: all were claimed and handled) makes
        # us a consumer of the partition's group at once, so operators see who owns it;
        # a blocking read would register us only once it is served.
        await self._finish_own(partition)

    @property
    def _more(self) -> bool:
        """Entries are waiting: carried from the last read, or left by it in Redis."""
        return bool(self._carry) or self.stream.more

    def _take_carry(self, count: int) -> list[Raw]:
        if self._carry and self.leases is not None:
            self._drop_carried_elsewhere()
        raws, self._carry = self._carry[:count], self._carry[count:]
        return raws

    def _drop_carried_elsewhere(self) -> None:
        """Carried entries of partitions whose lease this consumer lost are dropped: they
        stay pending, and the partition's new owner claims them before it reads anything
        new, so they are handled in order with the rest of their users' entries (not
        later, and twice, here). A partition only on its way out (surplus) keeps its lease
        until what is held of it is handled, carried entries included."""
        assert self.leases is not None
        leased = self.leases.owned
        gone = [r.id for r in self._carry if split_ref(r.id)[0] not in leased]
        if gone:
            self._held.difference_update(gone)
            dropped = set(gone)
            self._carry = [r for r in self._carry if r.id not in dropped]

    async def _read(self, count: int, block_ms: int | None) -> list[Raw]:
        """Up to `count` new entries: first what the last read carried over, then read
        (acking the done ones in the same round trip; blocking only when nothing was
        carried). What a read returns beyond `count` is carried to the next call, so a
        batch never outgrows the batch size and a short remainder is topped up."""
        raws = self._take_carry(count)
        try:
            while len(raws) < count:
                got = await self._fetch(count - len(raws), None if raws else block_ms)
                if not got:
                    break
                raws += got
                # A read that did not know where entries were shared its COUNT among every
                # partition: if it left some waiting, read them now that it knows.
                if self.stream.more and self.stream.blind:
                    continue
                # Redis answers a woken read with the partition that woke it only; one
                # ingest request lands on several at once. A consumer that does not
                # linger (fanout) reads the others at once, without blocking, into the
                # same batch: one handler call per request, not two (a fan-out script and
                # a read fewer: ~20% of the fanout consumer's CPU per request).
                if self.config.linger_ms <= 0 and self.stream.woke:
                    continue
                break
        except BaseException:
            self._carry = raws + self._carry
            raise
        if len(raws) > count:
            raws, self._carry = raws[:count], raws[count:]
        return raws

    async def _fetch(self, count: int, block_ms: int | None) -> list[Raw]:
        """Read new entries from Redis, acking the done ones in the same round trip."""
        ack, self._to_ack = self._to_ack, []
        try:
            acked, raws = await self.stream.ack_and_read(ack, ">", count, block_ms)
        except BaseException:
            self._to_ack = ack + self._to_ack  # XACK is idempotent: resend it later
            self._lost_read = True
            raise
        if acked:
            metrics.ENTRIES_ACKED.labels(self.group).inc(acked)
        self._held.update(r.id for r in raws)
        return raws

    async def _collect(self) -> list[Raw]:
        entries = await self._read(self.config.batch_size, self.config.block_ms)
        return await self._linger(entries) if entries else entries

    async def _linger(self, entries: list[Raw]) -> list[Raw]:
        """Let a partial batch fill for up to linger_ms (persist: flush_ms), unless the
        last read left entries waiting: then the batch goes now and the next one is read
        while it is handled."""
        cfg = self.config
        if cfg.linger_ms <= 0:
            return entries
        deadline = time.monotonic() + cfg.linger_ms / 1000
        while len(entries) < cfg.batch_size and not self._more and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining < 0.001:
                break
            # Every LINGER_POLL_S, not a blocking read: that one came back on every append
            # (every ingest request), just when the gateway and fanout were busiest.
            with anyio.move_on_after(min(remaining, LINGER_POLL_S)):
                await self._stopping.wait()
            if self._stopping.is_set():
                break  # the batch in hand goes; nothing more is read after a stop
            try:
                more = await self._read(cfg.batch_size - len(entries), None)
            except REDIS_UNAVAILABLE as exc:  # handle what we have; no entry is dropped
                logger.warning("group %s: Redis unavailable while batching (%s)", self.group,
                               exc)
                break
            entries = entries + more
        return entries

    async def _prefetch(self) -> None:
        """Read (acking the previous batch) and prepare the next batch while the handler
        works on this one."""
        try:
            raws = await self._read(self.config.batch_size, None)
        except REDIS_UNAVAILABLE as exc:  # the main loop's next read waits for Redis
            logger.debug("group %s: prefetch failed: %s", self.group, exc)
            return
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return  # the main loop's next read recreates the group
        if not raws:
            return
        self._next = batch = sort_batch(raws, self._more)
        prepare = getattr(self.handler, "prepare", None)
        if prepare is not None and batch.entries:
            prepare(batch.entries)

    async def _flush_acks(self, *, strict: bool = False) -> None:
        """Send the pending acks; if Redis is away they are kept for the next read (or,
        `strict`, kept and the error raised)."""
        ids, self._to_ack = self._to_ack, []
        if not ids:
            return
        try:
            acked = await self.stream.ack(ids)
        except REDIS_UNAVAILABLE as exc:
            # Tried again with the next read; if that never comes, the entries stay pending
            # and are redelivered (the handlers are idempotent).
            self._to_ack = ids + self._to_ack
            if strict:
                raise
            logger.warning("group %s: ack of %d entries failed (%s)", self.group, len(ids), exc)
            return
        metrics.ENTRIES_ACKED.labels(self.group).inc(acked)

    async def _maintain(self) -> None:
        now = time.monotonic()
        if self.leases is not None and (self._to_take or self._surplus):
            await self._apply_leases()
        if now >= self._next_claim:
            self._next_claim = now + self.config.claim_every_s
            await self._flush_acks()  # our done entries are not stale: never claim them
            await self._claim_stale()
        trim_every = self.config.trim_every_s
        if trim_every is not None and now >= self._next_trim:
            self._next_trim = now + trim_every
            for partition in self.stream.owned:
                trimmed = await retention.trim_acked(self.stream.redis, self.keys, partition)
                if trimmed:
                    logger.debug("trimmed %d acked entries from %s", trimmed,
                                 self.keys.ingest(partition))

    async def _claim_stale(self) -> None:
        """XAUTOCLAIM entries idle past claim_idle_ms (dead consumers', or our own failed
        ones) and handle them; a bounded number of pages per call."""
        for partition in list(self.stream.owned):
            await self._claim_stale_in(partition)

    async def _claim_stale_in(self, partition: int) -> None:
        start = "0-0"
        for _ in range(10):
            start = await self._claim_page(partition, self.config.claim_idle_ms, start)
            if start in ("0-0", "0") or self._stopping.is_set():
                return

    async def _claim_page(self, partition: int, min_idle_ms: int, start: str) -> str:
        """XAUTOCLAIM one page of `partition`'s entries idle `min_idle_ms` or more and
        handle them; the cursor of the next page ("0-0": done)."""
        claimed = await self.stream.autoclaim(partition, min_idle_ms, start,
                                              self.config.batch_size)
        vanished = list(claimed.deleted)
        if claimed.nil_seen:
            vanished += await self.stream.ack_vanished_own(partition)
        self._count_vanished(vanished)
        if claimed.entries:
            metrics.ENTRIES_CLAIMED.labels(self.group).inc(len(claimed.entries))
            logger.info("group %s: claimed %d entries of partition %d", self.group,
                        len(claimed.entries), partition)
            self._held.update(r.id for r in claimed.entries)
            await self._process(sort_batch(claimed.entries), True)
        return claimed.cursor

    def _count_vanished(self, ids: Sequence[str]) -> None:
        if ids:
            metrics.ENTRIES_VANISHED.labels(self.group).inc(len(ids))
            logger.warning("group %s: %d pending entries had no payload (trimmed or "
                           "deleted); acked", self.group, len(ids))

    async def _process(self, batch: Batch, history: bool) -> None:
        try:
            await self._settle(batch, history)
        finally:
            self._held.difference_update(r.id for r in batch.raws)

    async def _settle(self, batch: Batch, history: bool) -> None:
        """Handle one batch and settle every entry: ack, dead-letter, or leave pending."""
        if batch.gone:
            self._to_ack += batch.gone
            self._count_vanished(batch.gone)
        by_id = batch.by_id
        failures = dict(batch.malformed)
        entries = batch.entries
        deliveries: dict[str, int] = {}
        if history and entries:
            # Delivered more than max_deliveries times and still pending: every attempt
            # ended without an outcome (e.g. it crashed its consumer). Do not try again.
            deliveries = await self.stream.deliveries([e.id for e in entries])
            over = {e.id for e in entries
                    if deliveries.get(e.id, 1) > self.config.max_deliveries}
            for i in over:
                failures[i] = f"no outcome after {deliveries[i] - 1} deliveries"
            entries = [e for e in entries if e.id not in over]
        if entries:
            metrics.BATCH_SIZE.labels(self.group).observe(len(entries))
            # A read that stopped at its COUNT says more is waiting: read it meanwhile.
            # Otherwise the next read would mostly come back empty: one Redis command and
            # task for nothing.
            prefetch = (self._healthy and not history and not self._stopping.is_set()
                        and (batch.more or len(batch.raws) >= self.config.batch_size))
            result = await self._handle(entries, prefetch)
            if result is None:
                return  # stopping: leave the batch pending, ack nothing undone
            failures.update({i: err for i, err in result.items() if i in by_id})
            self._to_ack += [e.id for e in entries if e.id not in failures]
        if failures:
            await self._settle_failures(by_id, failures)

    async def _settle_failures(self, by_id: dict[str, Raw], failures: dict[str, str]) -> None:
        # Fresh counts: an entry acked or claimed elsewhere meanwhile is not ours to settle.
        counts = await self.stream.deliveries(list(failures))
        letters = []
        for i, error in failures.items():
            n = counts.get(i)
            if n is None:
                continue  # no longer ours to settle (acked or deleted meanwhile)
            if n >= self.config.max_deliveries or isinstance(error, Permanent):
                letters.append(deadletters.letter_of(
                    i, by_id[i].fields, group=self.group, consumer=self.consumer, error=error,
                    deliveries=n))
            else:
                logger.warning("group %s: entry %s failed (delivery %d of %d): %s",
                               self.group, i, n, self.config.max_deliveries, error)
        if letters:
            await deadletters.bury(self.stream.redis, self.keys, self.group, letters,
                                   maxlen=self.config.dead_maxlen)
            metrics.ENTRIES_DEAD.labels(self.group).inc(len(letters))
            for letter in letters:
                logger.error("group %s: entry %s dead-lettered after %d deliveries: %s",
                             self.group, letter.source_id, letter.deliveries, letter.error)

    async def _handle(self, entries: list[Entry], prefetch: bool) -> dict[str, str] | None:
        """The handler's failures, retrying transient errors; None if abandoned on stop."""
        if self._abandoned:
            return None
        result: dict[str, str] | None = None
        with anyio.CancelScope() as scope:
            self._work = scope
            try:
                if prefetch:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._prefetch)
                        result = await self._handle_retrying(entries)
                else:
                    result = await self._handle_retrying(entries)
            finally:
                self._work = None
        return result

    async def _handle_retrying(self, entries: list[Entry]) -> dict[str, str] | None:
        delay = self.config.backoff_base_s
        while True:
            started = time.perf_counter()
            try:
                failures = await self.handler.handle(entries)
            except RETRY_LATER as exc:
                metrics.TRANSIENT_FAILURES.labels(self.group).inc()
                self._healthy = False
                logger.warning("group %s: batch of %d failed transiently (%s: %s); retrying "
                               "in %.1fs", self.group, len(entries), type(exc).__name__, exc,
                               delay)
                if self._stopping.is_set():
                    return None
                with anyio.move_on_after(delay):
                    await self._stopping.wait()
                if self._stopping.is_set():
                    return None
                delay = min(delay * 2, self.config.backoff_cap_s)
                continue
            except Exception as exc:  # the batch boundary: a handler bug fails the batch
                self._healthy = False
                logger.exception("group %s: handler failed on a batch of %d", self.group,
                                 len(entries))
                return {e.id: f"{type(exc).__name__}: {exc}" for e in entries}
            metrics.BATCH_SECONDS.labels(self.group).observe(time.perf_counter() - started)
            self._healthy = True
            return failures

    async def _keepalive(self) -> None:
        """Reset the idle time of the entries we hold, so no other consumer claims them
        while a batch waits for a down database (this burns no delivery count)."""
        while True:
            await anyio.sleep(self.config.keepalive_s)
            if not self._held:
                continue
            try:
                await self.stream.keepalive(list(self._held))
            except REDIS_UNAVAILABLE as exc:
                logger.debug("keepalive failed: %s", exc)
            except redis.exceptions.ResponseError as exc:
                logger.warning("group %s: keepalive refused: %s", self.group, exc)

    async def _drain_guard(self) -> None:
        """After a stop request, give the work in hand drain_timeout_s, then abandon it
        (it stays pending and is redelivered)."""
        await self._stopping.wait()
        await anyio.sleep(self.config.drain_timeout_s)
        self._abandoned = True
        if self._work is not None:
            logger.warning("group %s: batch still running %.0fs after stop; leaving it "
                           "pending", self.group, self.config.drain_timeout_s)
            self._work.cancel()

    async def _release(self) -> None:
        try:
            left = await self.stream.release()
            if self.leases is not None:
                # Handed over at once, not after the lease times out; what we leave
                # pending is claimed by the next holder before it reads anything new.
                await self.leases.leave()
        except REDIS_UNAVAILABLE as exc:
            logger.warning("group %s: could not leave the group cleanly: %s", self.group, exc)
            return
        logger.info("consumer %s of group %s stopped%s", self.consumer, self.group,
                    " and left the group" if left else " (owns pending entries)")

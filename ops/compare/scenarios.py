"""The fault scenarios: each a named script that runs beside the load, seeded, the same in
every delivery mode. Times are fractions of the cell's load duration, so a short test
matrix and a long report run the same script.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from livefeed.core.embedded_cluster import EmbeddedCluster
from livefeed.core.settings import env_name
from livefeed.ops.compare.clients import FeedClient
from livefeed.ops.compare.deployment import CONSUMER_GROUPS, Deployment
from livefeed.ops.compare.load import LoadGenerator
from livefeed.ops.compare.records import Mark

QUIESCE_TIMEOUT_S = 5.0


@dataclass
class Context:
    """What a scenario script may act on while the load runs."""

    deployment: Deployment
    clients: Sequence[FeedClient]
    load: LoadGenerator
    clock: Callable[[], float]
    started: float  # the cell clock when the load began
    duration: float
    rng: random.Random
    marks: list[Mark] = field(default_factory=list)
    cluster: EmbeddedCluster | None = None  # the embedded cluster, for node faults

    def mark(self, what: str) -> None:
        """Log a step, timed in seconds since the load began."""
        self.marks.append(Mark(t=round(self.clock() - self.started, 3), what=what))

    async def at(self, fraction: float) -> None:
        """Sleep until `fraction` of the load duration has passed."""
        await anyio.sleep(max(0.0, self.started + fraction * self.duration - self.clock()))

    def missing(self) -> int:
        """Accepted events that connected clients of their user have not received yet."""
        by_user: dict[str, set[str]] = {}
        for s in self.load.sent:
            if s.accepted:
                by_user.setdefault(s.user, set()).add(s.event_id)
        return sum(len(by_user.get(c.log.user, set()) - c.seen)
                   for c in self.clients if not c.away)

    async def quiesce(self, timeout: float = QUIESCE_TIMEOUT_S) -> bool:
        """Wait (bounded) until connected clients have every accepted event of their user."""
        with anyio.move_on_after(timeout):
            while self.missing():
                await anyio.sleep(0.02)
            return True
        return False


Script = Callable[[Context], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    script: Script
    gateways: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    db_proxy: bool = False
    preview_chars: int = 80
    slow_clients: int = 0  # the last n clients get small socket buffers
    hot_share: float = 0.0  # this share of the events goes to the last client's user
    load_gateway: int = 0  # the gateway the load posts to (it stays up)
    # Kills Redis Cluster nodes: runs only on an embedded cluster (`compare --cluster`).
    needs_cluster: bool = False
    # Streams mode runs once per LIVEFEED_INGEST_REPLICAS value given here (empty: once,
    # with the deployment's setting).
    replica_variants: tuple[int, ...] = ()
    # With LIVEFEED_INGEST_REPLICAS=0 a lost acknowledged event is this scenario's
    # documented cost, not a broken guarantee (counted, no failing exit status).
    unreplicated_may_lose: bool = False


async def steady(ctx: Context) -> None:
    """Load only, nothing injected: the baseline of each mode."""


async def client_reconnect(ctx: Context) -> None:
    """Half the clients (seeded pick) drop at 25% for 30% of the run, then come back with
    their last id. The load pauses at both edges until what was posted is answered (and,
    before the drop, delivered), so every event falls clearly before, inside or after each
    client's away window, and the harness logs that window per client."""
    away = ctx.rng.sample(list(ctx.clients), max(1, len(ctx.clients) // 2))
    window = max(1.0, 0.3 * ctx.duration)
    await ctx.at(0.25)
    async with ctx.load.hold():
        await ctx.quiesce()
        async with anyio.create_task_group() as tg:
            for c in away:
                tg.start_soon(c.drop)
    ctx.mark(f"{len(away)} clients disconnect for {window:.1f}s")
    await anyio.sleep(window)
    async with ctx.load.hold():
        async with anyio.create_task_group() as tg:
            for c in away:
                tg.start_soon(c.come_back)
    ctx.mark(f"{len(away)} clients back with their last id")


async def gateway_restart(ctx: Context) -> None:
    """Two gateways, clients split between them, load posted to the second. At 40% the
    first is SIGKILLed; its clients reconnect to the second with their last id."""
    await ctx.at(0.4)
    on_it = sum(1 for c in ctx.clients if c.gateway_index == 0)
    ctx.deployment.kill_gateway(0)
    ctx.mark(f"SIGKILL gateway 0 ({on_it} clients on it)")


async def consumer_crash(ctx: Context) -> None:
    """At 30% and 65%: SIGKILL the persist and the fanout consumer, each at a moment it
    holds a batch it has read and not acked yet (polled, up to 2 s), leave them dead for 10%
    of the run, restart them under the same names (they re-read their own pending). In
    list mode the list writer is killed instead, on purpose between an LMPOP and its INSERT
    (its hold file makes it wait there; a kill timed by chance would rarely hit that window
    of a few ms every 500 ms): the batch it popped is lost."""
    for fraction in (0.3, 0.65):
        await ctx.at(fraction)
        if not ctx.deployment.consumers:
            ctx.mark("no consumers in pubsub mode: nothing to kill")
            return
        if ctx.deployment.mode == "list":
            popped = await ctx.deployment.kill_list_writer_after_pop()
            ctx.mark(f"SIGKILL list-writer between LMPOP and INSERT (on purpose), "
                     f"{popped} popped items in hand")
            await anyio.sleep(max(0.5, 0.1 * ctx.duration))
            await ctx.deployment.restart_consumers()
            ctx.mark("list-writer restarted")
            continue
        held: dict[str, int] = {}
        async with anyio.create_task_group() as tg:
            for group in CONSUMER_GROUPS:
                tg.start_soon(_kill_mid_batch, ctx.deployment, group, held)
        shown = ", ".join(f"{g} holding {n}" for g, n in held.items())
        ctx.mark(f"SIGKILL persist and fanout ({shown} unacked)")
        await anyio.sleep(max(0.5, 0.1 * ctx.duration))
        await ctx.deployment.restart_consumers()
        ctx.mark("consumers restarted")


async def _kill_mid_batch(deployment: Deployment, group: str, held: dict[str, int]) -> None:
    pending = 0
    with anyio.move_on_after(2.0):
        while not (pending := (await deployment.pending()).get(group, 0)):
            await anyio.sleep(0.002)
    deployment.kill_consumer(group)
    held[group] = pending


async def db_outage(ctx: Context) -> None:
    """PostgreSQL unreachable through the fault proxy from 25% for 35% of the run: open
    connections are reset, new ones dropped; then the link is restored. (The list writer
    goes on popping meanwhile, and every INSERT fails: each batch popped is lost.)"""
    proxy = ctx.deployment.proxy
    assert proxy is not None
    await ctx.at(0.25)
    proxy.cut()
    ctx.mark("database link cut")
    await ctx.at(0.6)
    proxy.restore()
    ctx.mark("database link restored")


async def slow_client(ctx: Context) -> None:
    """The last client (small socket buffer, 1200-byte MSS) reads one frame per 500 ms from
    15% to 75% of the run. Its user gets 80% of the events (~2.2 KB each) and the gateways'
    send queue is 16 frames, so its backlog outgrows the gateway's socket buffers (some
    hundred KB) within a second or two: close 4008, and the client reconnects with its last
    id, again and again while it stays slow."""
    slow = ctx.clients[-1]
    await ctx.at(0.15)
    slow.read_delay = 0.5
    ctx.mark(f"{slow.log.name} reads one frame per 500 ms")
    await ctx.at(0.75)
    slow.read_delay = 0.0
    ctx.mark(f"{slow.log.name} reads at full speed")


async def pubsub_drop(ctx: Context) -> None:
    """At 30%, 55% and 80%: CLIENT KILL the gateway's pub/sub connection (by id, found by
    the hub's client name, so a shared Redis's other clients are untouched)."""
    for fraction in (0.3, 0.55, 0.8):
        await ctx.at(fraction)
        killed = await ctx.deployment.kill_pubsub()
        ctx.mark(f"CLIENT KILL of {killed} pub/sub link(s)")


async def shard_failover(ctx: Context) -> None:
    """At 30%: SIGKILL the Redis Cluster primary that owns the partition of a user of the
    load (seeded pick; every user on that node is hit). Its replica takes over after the
    node timeout; then the killed node is started again and rejoins as the new primary's
    replica, and the script waits until the cluster is ok (the next cell gets a whole
    cluster). Until the failover that shard's appends fail (503). With
    LIVEFEED_INGEST_REPLICAS=1 they go on failing until the shard has a replica again, and
    no 202 can be lost; with 0 they succeed right after the failover, and what the dead
    primary acknowledged but had not replicated yet is lost."""
    cluster = ctx.cluster
    assert cluster is not None, "shard-failover needs the embedded cluster"
    keys = ctx.deployment.keys
    users = sorted({c.log.user for c in ctx.clients})
    await ctx.at(0.3)

    def owners() -> dict[str, int]:
        return {u: cluster.owner(keys.ingest_of(u)).port for u in users}

    by_user = await anyio.to_thread.run_sync(owners)
    victim = cluster.node(by_user[ctx.rng.choice(users)])
    hit = sum(1 for port in by_user.values() if port == victim.port)
    refused = ctx.load.errors["HTTP 503"]
    victim.signal(signal.SIGKILL)
    ctx.mark(f"SIGKILL primary :{victim.port} ({hit} of {len(users)} users' partitions on it)")
    await anyio.to_thread.run_sync(victim.kill)  # reap it
    promoted = await anyio.to_thread.run_sync(cluster.wait_for_failover, victim)
    ctx.mark(f"replica :{promoted.port} took over "
             f"({ctx.load.errors['HTTP 503'] - refused} requests refused so far)")
    await anyio.to_thread.run_sync(cluster.restart, victim)
    await anyio.to_thread.run_sync(cluster.wait_until_ok)
    ctx.mark(f":{victim.port} back as a replica, cluster ok "
             f"({ctx.load.errors['HTTP 503'] - refused} requests refused since the kill)")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("steady", "no fault", steady),
        Scenario("client-reconnect", "half the clients away for 30% of the run",
                 client_reconnect),
        Scenario("gateway-restart", "SIGKILL one of two gateways", gateway_restart,
                 gateways=2, load_gateway=1),
        Scenario("consumer-crash", "SIGKILL persist and fanout twice, restart",
                 consumer_crash),
        Scenario("db-outage", "PostgreSQL unreachable for 35% of the run", db_outage,
                 db_proxy=True),
        Scenario("slow-client", "one client reads too slowly (send queue 16)", slow_client,
                 env={env_name("send_queue"): "16"}, preview_chars=2000, slow_clients=1,
                 hot_share=0.8),
        Scenario("pubsub-drop", "CLIENT KILL the gateway's pub/sub link 3 times", pubsub_drop),
        Scenario("shard-failover", "SIGKILL a Redis Cluster primary; replica takes over",
                 shard_failover, needs_cluster=True, replica_variants=(0, 1),
                 unreplicated_may_lose=True),
    )
}


def describe(name: str) -> str:
    """The scenario's documentation: its summary and its script's docstring."""
    s = SCENARIOS[name]
    return f"{s.summary}. {' '.join((s.script.__doc__ or '').split())}"

"""The gateway hub on a real cluster: one pub/sub link per primary, so a stalled node does
not hold up the others' live frames, and a slot that moves under a subscription is
followed to its new node (the sessions re-sync from their feeds)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio
from redis.crc import key_slot

from livefeed.core import redis_client
from livefeed.core.embedded_cluster import ClusterNode, EmbeddedCluster
from livefeed.core.keys import Keys
from livefeed.gateway.hub import Hub
from tests.gateway.livehelp import Counting, reconnects
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def users_by_node(cluster: EmbeddedCluster, keys: Keys) -> dict[int, list[str]]:
    """Some users per primary (by port), found by where their live channel lives."""
    found: dict[int, list[str]] = {}
    for i in range(400):
        user = f"u{i}"
        found.setdefault(cluster.owner(keys.live(user)).port, []).append(user)
    assert len(found) == 3
    return found


def spublish(node: ClusterNode, channel: str, data: str) -> int:
    with node.client() as c:
        return int(c.execute_command("SPUBLISH", channel, data))


async def joined_hub(cluster: EmbeddedCluster, keys: Keys, users: list[str], tg: Any,
                     stack: contextlib.AsyncExitStack) -> tuple[Hub, dict[str, Counting]]:
    hub = Hub(cluster.cluster_url, keys, cluster=True, ping_interval_s=1.0)
    tg.start_soon(hub.run)
    with anyio.fail_after(30):
        await hub.connected_once.wait()
    listeners = {u: Counting() for u in users}
    for user, listener in listeners.items():
        assert await stack.enter_async_context(hub.subscribe(user, listener))
    return hub, listeners


async def test_a_stopped_node_does_not_hold_up_the_others(
        cluster_factory: Callable[..., EmbeddedCluster]) -> None:
    cluster = cluster_factory(node_timeout_ms=60_000)  # no failover during this test
    keys = Keys("lfhub")
    by_node = users_by_node(cluster, keys)
    stopped_port, *healthy = sorted(by_node)
    users = [u for port in by_node for u in by_node[port][:5]]
    async with anyio.create_task_group() as tg, contextlib.AsyncExitStack() as stack:
        hub, listeners = await joined_hub(cluster, keys, users, tg, stack)
        stopped = cluster.node(stopped_port)
        stopped.signal(signal.SIGSTOP)
        try:
            for port in healthy:
                for user in by_node[port][:5]:
                    assert spublish(cluster.node(port), keys.live(user), f"hi {user}") == 1
            await eventually(lambda: all(listeners[u].frames == [f"hi {u}".encode()]
                                         for p in healthy for u in by_node[p][:5]),
                             what="live frames of users on the running nodes", timeout=10)
            assert all(listeners[u].frames == [] for u in by_node[stopped_port][:5])
        finally:
            stopped.signal(signal.SIGCONT)
        tg.cancel_scope.cancel()
    await hub.aclose()


def move_slot(cluster: EmbeddedCluster, slot: int, source: ClusterNode,
              target: ClusterNode) -> None:
    """Migrate `slot` (and its keys) from `source` to `target`, as redis-cli --cluster
    reshard does."""
    def node_id(node: ClusterNode) -> str:
        with node.client() as c:
            return str(c.execute_command("CLUSTER", "MYID"))

    src, dst = node_id(source), node_id(target)
    with target.client() as t, source.client() as s:
        t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst)
        while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            s.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.primary_nodes():
        with node.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst)


async def test_a_slot_moved_under_a_subscription_is_followed(
        cluster_factory: Callable[..., EmbeddedCluster]) -> None:
    cluster = cluster_factory()
    keys = Keys("lfmove")
    by_node = users_by_node(cluster, keys)
    source_port, target_port = sorted(by_node)[:2]
    user = by_node[source_port][0]
    channel = keys.live(user)
    client = redis_client.connect(cluster.cluster_url, cluster=True)
    try:
        await client.xadd(keys.feed(user), {"data": b"{}"})  # a key that must move too
        async with anyio.create_task_group() as tg, contextlib.AsyncExitStack() as stack:
            hub, listeners = await joined_hub(cluster, keys, [user], tg, stack)
            listener = listeners[user]
            await anyio.to_thread.run_sync(move_slot, cluster, key_slot(channel.encode()),
                                           cluster.node(source_port), cluster.node(target_port))
            # The source pushes `sunsubscribe`; the hub subscribes on the target and asks
            # the session to re-sync (whatever was published meanwhile is in its feed).
            await eventually(lambda: listener.resyncs >= 1, what="a re-sync after the move",
                             timeout=20)
            target = cluster.node(target_port)
            await eventually(lambda: spublish(target, channel, "after") == 1,
                             what="the channel subscribed on the new node", timeout=20)
            await eventually(lambda: b"after" in listener.frames, what="the frame", timeout=10)
            tg.cancel_scope.cancel()
        await hub.aclose()
        assert await client.xlen(keys.feed(user)) == 1
    finally:
        await client.aclose()
    with redis.Redis(target.host, target.port) as t:
        assert t.execute_command("CLUSTER", "COUNTKEYSINSLOT", key_slot(channel.encode())) == 1


async def test_lingering_channels_on_every_node_expire_together(
        redis_cluster_url: str, redis_cluster: Any, keys: Keys) -> None:
    """Channels of many slots on every primary linger, then go in one timer's batches:
    one SUNSUBSCRIBE per slot (several slots in one would be refused), no link lost."""
    async def shardnumsub(channel: str) -> int:
        node = redis_cluster.get_node_from_key(channel)
        async with redis.asyncio.Redis(host=node.host, port=node.port) as client:
            reply = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(reply[1])

    await redis_cluster.initialize()  # its slot map
    users = [f"u{i}" for i in range(60)]
    channels = [keys.live(u) for u in users]
    assert len({redis_cluster.get_node_from_key(c).name for c in channels}) == 3
    assert len({key_slot(c.encode()) for c in channels}) > 3
    before = reconnects()
    hub = Hub(redis_cluster_url, keys, cluster=True, ping_interval_s=1.0, linger_s=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(hub.run)
        with anyio.fail_after(30):
            await hub.connected_once.wait()
        async with contextlib.AsyncExitStack() as stack:
            for user in users:
                assert await stack.enter_async_context(hub.subscribe(user, Counting()))
        assert hub.channels() == 60 and hub.local_users() == 0
        assert [await shardnumsub(c) for c in channels] == [1] * 60
        back = Counting()
        async with hub.subscribe(users[7], back):
            await redis_cluster.execute_command("SPUBLISH", channels[7], "again")
            await eventually(lambda: back.frames == [b"again"], what="a live frame",
                             timeout=10)

        async def all_gone() -> bool:
            return [await shardnumsub(c) for c in channels] == [0] * 60

        await eventually(all_gone, what="every lingering channel dropped", timeout=10)
        assert hub.channels() == 0 and reconnects() == before
        tg.cancel_scope.cancel()
    await hub.aclose()

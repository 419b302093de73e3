"""The test Redis Cluster is a real one: 3 shards with a replica each, streams in several
slots, sharded pub/sub on the owning node, and a real failover when a primary dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from livefeed.core import redis_client
from livefeed.core.cluster_view import SLOTS, parse_nodes
from livefeed.core.embedded_cluster import ClusterError, EmbeddedCluster
from livefeed.core.keys import Keys

pytestmark = pytest.mark.anyio


async def shard_keys(client: RedisCluster, prefix: str, shards: int = 3) -> list[str]:
    """One key per primary of the cluster, all under `prefix`."""
    await client.initialize()  # the slot map: the client fetches it lazily otherwise
    found: dict[str, str] = {}
    for i in range(1000):
        key = f"{prefix}:{{{i}}}:s"
        found.setdefault(client.get_node_from_key(key).name, key)
        if len(found) == shards:
            return list(found.values())
    raise AssertionError(f"keys of {prefix} reach {len(found)} shards only")


async def test_the_cluster_has_three_primaries_with_a_replica_each(
    redis_cluster_url: str,
) -> None:
    with redis.Redis.from_url(redis_cluster_url, decode_responses=True) as node:
        views = parse_nodes(node.execute_command("CLUSTER", "NODES"))
        info = node.execute_command("CLUSTER", "INFO")
    primaries = [v for v in views if v.is_primary and not v.failed]
    replicas = [v for v in views if not v.is_primary and not v.failed]
    assert len(primaries) == 3 and len(replicas) == 3
    assert sorted(r.primary_id for r in replicas) == sorted(p.node_id for p in primaries)
    assert sum(b - a + 1 for p in primaries for a, b in p.slots) == SLOTS
    assert "cluster_state:ok" in info


async def test_streams_in_different_slots_on_every_shard(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    streams = await shard_keys(redis_cluster, keys.prefix)
    for n, key in enumerate(streams):
        await redis_cluster.xadd(key, {"n": str(n)})
        await redis_cluster.xadd(key, {"n": str(n + 10)})
    for n, key in enumerate(streams):
        entries = await redis_cluster.xrange(key)
        assert [f[b"n"] for _, f in entries] == [str(n).encode(), str(n + 10).encode()]


async def test_sharded_pubsub_on_a_plain_connection_to_the_owning_node(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    channels = await shard_keys(redis_cluster, keys.prefix)
    for channel in channels:
        owner = redis_cluster.get_node_from_key(channel)
        plain = aioredis.Redis(host=owner.host, port=owner.port)
        pubsub = plain.pubsub()
        try:
            await pubsub.ssubscribe(channel)
            with anyio.fail_after(5):
                confirm = await pubsub.get_message(timeout=5)
            assert confirm is not None and confirm["type"] == "ssubscribe"
            assert await redis_cluster.spublish(channel, b"hello") == 1
            with anyio.fail_after(5):
                message = await pubsub.get_message(timeout=5)
            assert message == {
                "type": "smessage",
                "pattern": None,
                "channel": channel.encode(),
                "data": b"hello",
            }
        finally:
            await pubsub.aclose()
            await plain.aclose()


async def test_a_killed_primary_is_replaced_by_its_replica(
    cluster_factory: Callable[..., EmbeddedCluster],
) -> None:
    """SIGKILL a primary: writes to the other shards go on meanwhile
    (`cluster-require-full-coverage no`); its replica takes over within the bound, with
    what it had acknowledged (WAIT), and writes to its slots work again."""
    cluster = cluster_factory()
    client: Any = redis_client.connect(cluster.url, cluster=True)
    try:
        victim_key, *other_keys = await shard_keys(client, "failover")
        dead = cluster.owner(victim_key)
        [replica] = cluster.replicas_of(dead)
        with dead.client() as direct:
            direct.xadd(victim_key, {"n": "before"})
            assert direct.execute_command("WAIT", 1, 5000) == 1

        dead.kill()
        for key in other_keys:
            await client.xadd(key, {"n": "during"})
        new_primary = await anyio.to_thread.run_sync(cluster.wait_for_failover, dead, 30.0)
        assert new_primary.port == replica.port and new_primary.role() == "primary"

        with anyio.fail_after(20):  # the client learns the new owner on its next MOVED/error
            while True:
                try:
                    await client.xadd(victim_key, {"n": "after"})
                    break
                except (redis.exceptions.ConnectionError, redis.exceptions.ClusterDownError):
                    await anyio.sleep(0.2)
        assert [f[b"n"] for _, f in await client.xrange(victim_key)] == [b"before", b"after"]
        for key in other_keys:
            assert [f[b"n"] for _, f in await client.xrange(key)] == [b"during"]
    finally:
        await client.aclose()


async def test_a_stopped_primary_is_replaced_and_rejoins_as_a_replica(
    cluster_factory: Callable[..., EmbeddedCluster],
) -> None:
    """SIGSTOP (a hung primary): its replica takes over; after SIGCONT the old primary
    learns it was replaced and follows its successor."""
    cluster = cluster_factory()  # 3 primaries: a failover needs a majority of them
    hung = cluster.owner("{hang}")
    hung.signal(signal.SIGSTOP)
    new_primary = await anyio.to_thread.run_sync(cluster.wait_for_failover, hung, 30.0)
    hung.signal(signal.SIGCONT)
    await anyio.to_thread.run_sync(cluster.wait_until_ok, 30.0)
    assert hung.role() == "replica" and cluster.replicas_of(new_primary) == [hung]


def test_the_nodes_die_with_a_killed_owner(tmp_path: Path) -> None:
    """A test run or `livefeed up` SIGKILLed leaves no server behind."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from livefeed.core.embedded_cluster import EmbeddedCluster\n"
        "c = EmbeddedCluster(Path(sys.argv[1]), primaries=1, persist=False).start()\n"
        "print(' '.join(str(n.pid) for n in c.nodes), flush=True)\n"
        "time.sleep(120)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as owner:
        try:
            assert owner.stdout is not None
            pids = [int(p) for p in owner.stdout.readline().split()]
            assert len(pids) == 2 and all(_running(p) for p in pids)
        finally:
            owner.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _running(p)]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose: its parent (init here) reaps it
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_a_restarted_cluster_comes_back_with_its_data(tmp_path: Path) -> None:
    """`livefeed up --cluster` twice on one data dir: same nodes, same slots, the data."""
    with EmbeddedCluster(tmp_path, primaries=2) as cluster:
        ports = sorted(n.port for n in cluster.nodes)
        client = redis.RedisCluster.from_url(cluster.url)
        keys = [f"restart:{{{i}}}" for i in range(20)]
        for key in keys:
            client.xadd(key, {"k": "v"})
        client.close()
    with EmbeddedCluster(tmp_path, primaries=2) as cluster:
        assert sorted(n.port for n in cluster.nodes) == ports
        client = redis.RedisCluster.from_url(cluster.url)
        assert [client.xlen(key) for key in keys] == [1] * len(keys)
        client.close()
    with pytest.raises(ClusterError, match="delete the directory"):
        EmbeddedCluster(tmp_path, primaries=3).start()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its old TIME_WAITs
        taken.bind(("127.0.0.1", ports[0]))
        taken.listen()
        with pytest.raises(ClusterError, match=f"ports it was formed with .*{ports[0]}"):
            EmbeddedCluster(tmp_path, primaries=2).start()

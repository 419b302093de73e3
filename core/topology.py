"""Which node serves a key, and one plain client per primary node.

Some work must stay on one connection of one node: a pipeline whose `WAIT` has to follow
the writes it waits for, a pub/sub link. redis-py's cluster client keeps the slot map
(refreshed on MOVED); this keeps a plain `redis.asyncio.Redis` per primary beside it. On a
standalone server there is one node, served by the client itself.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError

logger = logging.getLogger(__name__)

STANDALONE = "standalone"


def is_topology_error(exc: BaseException) -> bool:
    """A reply that means the slot map is stale or the node is gone (retry after refresh)."""
    if isinstance(exc, (RedisConnectionError, RedisClusterException, ConnectionError, OSError,
                        TimeoutError)):
        return True
    text = str(exc)
    return isinstance(exc, ResponseError) and text.split(" ", 1)[0] in (
        "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "MASTERDOWN")


class Topology:
    """`client`: the process's Redis client (a `RedisCluster` when `cluster`)."""

    def __init__(self, client: Any, *, cluster: bool, **node_options: Any) -> None:
        self.client = client
        self.cluster = cluster
        self.node_options = node_options
        self._nodes: dict[str, aioredis.Redis] = {}
        self._ready = not cluster

    async def ready(self) -> None:
        """Load the slot map once (the cluster client connects lazily)."""
        if not self._ready:
            await self.client.initialize()
            self._ready = True

    def node_of(self, key: str) -> str:
        if not self.cluster:
            return STANDALONE
        node = self.client.get_node_from_key(key)
        return str(node.name)

    def node_client(self, name: str) -> Any:
        if not self.cluster:
            return self.client
        found = self._nodes.get(name)
        if found is None:
            host, _, port = name.rpartition(":")
            found = self._nodes[name] = aioredis.Redis(host=host, port=int(port),
                                                       **self.node_options)
        return found

    def primaries(self) -> list[str]:
        if not self.cluster:
            return [STANDALONE]
        return [str(n.name) for n in self.client.get_primaries()]

    async def refresh(self) -> None:
        """Re-read the slot map (after MOVED, a failover, a node gone)."""
        if not self.cluster:
            return
        try:
            await self.client.nodes_manager.initialize()
        except Exception as exc:  # the next command fails and says why
            logger.warning("cluster slot map refresh failed: %r", exc)

    async def aclose(self) -> None:
        nodes, self._nodes = self._nodes, {}
        for client in nodes.values():
            with contextlib.suppress(Exception):
                await client.aclose()

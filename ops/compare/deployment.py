"""A throwaway livefeed deployment for one cell: real `livefeed gateway` and `livefeed
consumer` processes on a fresh namespace (its own `LIVEFEED_PREFIX` and its own Postgres
schema through `?search_path=`), torn down with every key and the schema afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import redis.exceptions

from livefeed.core import redis_client
from livefeed.core.embedded import free_port
from livefeed.core.errors import DB_ERRORS, REDIS_ERRORS, LivefeedError
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.settings import Resolved, env_name
from livefeed.ops.faultproxy import FaultProxy
from livefeed.ops.namespace import Namespace, throwaway_namespace
from livefeed.ops.procs import Child, child_env, livefeed_argv

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 40.0
CONSUMER_GROUPS = (PERSIST_GROUP, FANOUT_GROUP)
LIST_WRITER = "list-writer"
# The line the list writer logs once it runs (consumers/listwriter.py).
_WRITER_STARTED = "list-writer compare-list-writer: LMPOP"


class DeploymentError(LivefeedError, RuntimeError):
    """A process did not come up; the message carries the tail of its log."""


class Deployment:
    """Processes for one cell. Use `async with`; everything is killed and dropped on exit."""

    def __init__(self, base: Resolved, *, mode: str, log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.base = base
        self.mode = mode
        self.log_dir = log_dir
        self._namespace = throwaway_namespace(base.redis_url, base.database_url, label="lfc",
                                              cluster=base.redis_cluster)
        self._ns: Namespace | None = None
        self.secret = uuid.uuid4().hex
        self.webhook_secret = uuid.uuid4().hex
        self.extra_env = env or {}
        self.proxy: FaultProxy | None = None
        self.gateways: list[Child] = []
        self.gateway_urls: list[str] = []
        self.consumers: list[Child] = []
        self.redis: Any = redis_client.connect(base.redis_url, cluster=base.redis_cluster)

    def _env(self, dsn: str) -> dict[str, str]:
        env = child_env(self.base)
        env.update({
            env_name("database_url"): dsn,
            env_name("delivery"): self.mode,
            env_name("prefix"): self.prefix,
            env_name("secret"): self.secret,
            env_name("webhook_secret"): self.webhook_secret,
            env_name("data_dir"): str(self.log_dir / "data"),
        })
        env.update(self.extra_env)
        return env

    async def __aenter__(self) -> Deployment:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._ns = await self._namespace.__aenter__()
        return self

    @property
    def namespace(self) -> Namespace:
        if self._ns is None:
            raise RuntimeError("use `async with Deployment(...)` first")
        return self._ns

    @property
    def prefix(self) -> str:
        return self.namespace.prefix

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix, partitions=self.base.partitions)

    @property
    def dsn(self) -> str:
        """The database URL of this cell's schema."""
        return self.namespace.database_url

    async def __aexit__(self, *exc: object) -> None:
        for proc in [*self.gateways, *self.consumers]:
            proc.kill()
        if self.proxy is not None:
            await self.proxy.aclose()
        try:
            await self._namespace.__aexit__(None, None, None)
        except (*REDIS_ERRORS, *DB_ERRORS, asyncpg.PostgresError) as exc:
            # The cell's figures matter more than a leftover namespace.
            logger.warning("could not drop namespace %s: %s", self.prefix, exc)
        finally:
            await self.redis.aclose()

    async def start(self, *, gateways: int = 1, consumers: bool = True,
                    db_proxy: bool = False) -> None:
        """Start the processes concurrently; return once every one of them is ready."""
        dsn = self.dsn
        if db_proxy:
            self.proxy = await FaultProxy.for_url(self.dsn).start()
            dsn = self.proxy.url_for(self.dsn)
        env = self._env(dsn)
        for _ in range(gateways):
            port = free_port()
            self.gateways.append(Child(livefeed_argv(["gateway", "--port", str(port)]), env,
                                       self.log_dir / f"gateway-{port}.log").start())
            self.gateway_urls.append(f"http://127.0.0.1:{port}")
        if consumers and self.mode == "list":
            self.consumers.append(Child(
                livefeed_argv(["consumer", LIST_WRITER, "--name", f"compare-{LIST_WRITER}",
                               "--hold-file", str(self.hold_file)]),
                # Its start line (INFO) tells when it runs.
                {**env, env_name("log_level"): "INFO"},
                self.log_dir / f"{LIST_WRITER}.log", name=LIST_WRITER).start())
        elif consumers:
            for group in CONSUMER_GROUPS:
                self.consumers.append(Child(
                    livefeed_argv(["consumer", group, "--name", f"compare-{group}"]), env,
                    self.log_dir / f"{group}.log").start())
        with anyio.fail_after(START_TIMEOUT_S):
            async with anyio.create_task_group() as tg:
                for proc, url in zip(self.gateways, self.gateway_urls, strict=True):
                    tg.start_soon(self._wait_http, proc, f"{url}/healthz")
                for proc in self.consumers:
                    tg.start_soon(self._wait_consumer, proc, proc.name)

    @property
    def hold_file(self) -> Path:
        """While this file exists the list writer holds each popped batch before its
        INSERT (`--hold-file`): `hold_list_writer` lands a SIGKILL in its loss window."""
        return self.log_dir / "list-writer.hold"

    async def _wait_http(self, proc: Child, url: str) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                self._check_alive(proc)
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                await anyio.sleep(0.1)

    async def _wait_consumer(self, proc: Child, group: str, since: float | None = None) -> None:
        """Ready once Redis lists the consumer in its group on every partition (it took
        them all over: the only consumer of its group), having read after `since`."""
        if group == LIST_WRITER:
            while self._writer_starts(proc) < proc.starts:
                self._check_alive(proc)
                await anyio.sleep(0.05)
            return
        name = f"compare-{group}"
        while True:
            self._check_alive(proc)
            if all([await self._lists(stream, group, name, since)
                    for stream in self.keys.ingests]):
                return
            await anyio.sleep(0.05)

    async def _lists(self, stream: str, group: str, name: str, since: float | None) -> bool:
        with contextlib.suppress(redis.exceptions.ResponseError):
            for c in await self.redis.xinfo_consumers(stream, group):
                if _text(c.get("name")) != name:
                    continue
                if since is None or int(c.get("idle", 0)) <= (time.monotonic() - since) * 1000:
                    return True
        return False

    @staticmethod
    def _writer_starts(proc: Child) -> int:
        with contextlib.suppress(OSError):
            return proc.log_path.read_text(errors="replace").count(_WRITER_STARTED)
        return 0

    def _check_alive(self, proc: Child) -> None:
        if not proc.alive():
            raise DeploymentError(f"{proc.name} exited at start:\n{proc.tail()}")

    # -- faults ------------------------------------------------------------------------

    def kill_gateway(self, index: int) -> None:
        self.gateways[index].kill()

    async def pending(self) -> dict[str, int]:
        """Entries delivered to each group and not acked yet."""
        out: dict[str, int] = {}
        for group in CONSUMER_GROUPS:
            for stream in self.keys.ingests:
                with contextlib.suppress(redis.exceptions.ResponseError):
                    info = await self.redis.xpending(stream, group)
                    out[group] = out.get(group, 0) + int(info["pending"])
        return out

    async def kill_list_writer_after_pop(self, timeout: float = 5.0) -> int:
        """SIGKILL the list writer between an LMPOP and its INSERT, on purpose: arm its hold
        file, wait for its next `popped N items` line, kill it; N (0: nothing was popped
        within `timeout`, killed anyway)."""
        proc = next(p for p in self.consumers if p.name == LIST_WRITER)
        before = proc.tail(1 << 20).count("list-writer: popped ")
        self.hold_file.touch()
        try:
            with anyio.move_on_after(timeout):
                while True:
                    lines = [ln for ln in proc.tail(1 << 20).splitlines()
                             if "list-writer: popped " in ln]
                    if len(lines) > before:
                        proc.kill()
                        return int(lines[before].split("list-writer: popped ", 1)[1].split()[0])
                    await anyio.sleep(0.01)
            proc.kill()
            return 0
        finally:
            self.hold_file.unlink(missing_ok=True)

    def kill_consumer(self, group: str) -> None:
        for proc in self.consumers:
            if proc.name == group:
                proc.kill()

    async def restart_consumers(self) -> None:
        since = time.monotonic()
        for proc in self.consumers:
            proc.start()
        with anyio.fail_after(START_TIMEOUT_S):
            for proc in self.consumers:
                await self._wait_consumer(proc, proc.name, since)

    async def kill_pubsub(self) -> int:
        """CLIENT KILL the gateways' pub/sub connections of this namespace; how many.

        Only this cell's links: the hub names its connection `<prefix>-hub-<pid>-...`, so
        other users of a shared Redis keep theirs.
        """
        head = f"{self.prefix}-hub-"
        killed = 0
        for client in await self.redis.client_list(_type="pubsub"):
            name = _text(client.get("name") or "")
            if name.startswith(head):
                with contextlib.suppress(redis.exceptions.ResponseError):
                    killed += int(await self.redis.client_kill_filter(_id=client["id"]))
        return killed

    # -- results -----------------------------------------------------------------------

    async def rows(self) -> dict[str, int]:
        """Rows in `newsletters` per event id, read directly (not through the proxy)."""
        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            records = await conn.fetch(
                "SELECT id::text AS id, count(*) AS n FROM newsletters GROUP BY id")
        finally:
            await conn.close()
        return {r["id"]: int(r["n"]) for r in records}

    async def row_count(self) -> int:
        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM newsletters"))
        finally:
            await conn.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def monotonic_clock() -> Any:
    """A clock starting at 0 now: the cell's timebase."""
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0

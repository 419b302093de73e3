"""Real `livefeed` processes for end-to-end and chaos tests: start, wait, kill."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from core.embedded import free_port
from core.settings import Settings
from tests.conftest import settings_env


class Proc:
    """One `livefeed ...` child process with its output in a log file."""

    def __init__(self, args: list[str], settings: Settings | None, log_dir: Path,
                 extra_env: dict[str, str] | None = None, name: str | None = None) -> None:
        """`settings=None`: no LIVEFEED_* variable at all but `extra_env` (embedded default)."""
        self.args = args
        self.name = name or "-".join(args[:2])
        base = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
        given = settings_env(settings) if settings is not None else {}
        self.env = {**base, **given, **(extra_env or {})}
        self.log_path = log_dir / f"{self.name}-{time.monotonic_ns()}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no ack, no goodbye."""
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit code."""
        assert self.popen is not None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {timeout}s\n{self.output()}"
            ) from None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""


def wait_http(url: str, timeout: float = 20.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited early:\n{proc.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} not up after {timeout}s" + (f"\n{proc.output()}" if proc else ""))


def start_gateway(settings: Settings, log_dir: Path, port: int | None = None,
                  extra_env: dict[str, str] | None = None) -> tuple[Proc, str]:
    """A `livefeed gateway` process; returns it and its base URL once /healthz answers."""
    port = port or free_port()
    proc = Proc(["gateway", "--port", str(port)], settings, log_dir, extra_env,
                name=f"gateway-{port}").start()
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc=proc)
    return proc, url


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    """Kill the given processes (if still alive) on the way out, whatever happened."""
    try:
        yield
    finally:
        for p in procs:
            p.kill()


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False

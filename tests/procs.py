"""Real `livefeed` processes for end-to-end and chaos tests: start, wait, kill."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from livefeed.core.embedded import free_port
from livefeed.core.settings import Settings
from livefeed.ops.procs import Child, child_env, livefeed_argv


class Proc(Child):
    """One `livefeed ...` child process of a test, with its output in a log file."""

    def __init__(self, args: list[str], settings: Settings | None, log_dir: Path,
                 extra_env: dict[str, str] | None = None, name: str | None = None) -> None:
        """`settings=None`: no LIVEFEED_* variable at all but `extra_env` (embedded default)."""
        name = name or "-".join(args[:2])
        super().__init__(livefeed_argv(args), child_env(settings, extra_env),
                         log_dir / f"{name}-{time.monotonic_ns()}.log", name=name)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit code."""
        code = super().terminate(timeout)
        if code is None:
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout}s\n{self.output()}")
        return code

    def output(self) -> str:
        return self.tail(5000)


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

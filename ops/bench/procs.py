"""Child processes of a benchmark: gateways, consumers, baselines; their RSS and profiles."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from livefeed.core.embedded import free_port
from livefeed.core.settings import Settings
from livefeed.ops.procs import Child, child_env, livefeed_argv


def livefeed(args: list[str], settings: Settings, log: Path,
             extra_env: dict[str, str] | None = None) -> Child:
    return Child(livefeed_argv(args), child_env(settings, extra_env), log).start()


def wait_http(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.log_path.name} exited at start:\n{child.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not up after {timeout:.0f}s:\n{child.tail()}")


@contextlib.contextmanager
def gateway(settings: Settings, workdir: Path, name: str = "gateway",
            extra_env: dict[str, str] | None = None) -> Iterator[tuple[Child, int]]:
    """A real `livefeed gateway` process; yields it and its port once /healthz answers."""
    port = free_port()
    child = livefeed(["gateway", "--port", str(port)], settings,
                     workdir / f"{name}-{port}.log", extra_env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", child)
        yield child, port
    finally:
        child.terminate()


@contextlib.contextmanager
def consumer(settings: Settings, workdir: Path, group: str,
             name: str | None = None) -> Iterator[Child]:
    args = ["consumer", group] + (["--name", name] if name else [])
    child = livefeed(args, settings, workdir / f"consumer-{name or group}.log")
    try:
        time.sleep(0.2)
        if not child.alive():
            raise RuntimeError(f"livefeed consumer {group} exited at start:\n{child.tail()}")
        yield child
    finally:
        child.terminate()


@contextlib.contextmanager
def baseline_server(workdir: Path, settings: Settings, module: str, name: str,
                    extra: list[str] | None = None) -> Iterator[tuple[Child, int]]:
    """A baseline server `python -m livefeed.ops.bench.<module> --port P --redis URL
    --prefix P [extra]` (ops/bench/baseline.py); yields it and its port once /healthz
    answers."""
    assert settings.redis_url
    port = free_port()
    child = Child([sys.executable, "-m", f"livefeed.ops.bench.{module}", "--port", str(port),
                   "--redis", settings.redis_url, "--prefix", settings.prefix, *(extra or [])],
                  child_env(settings), workdir / f"{name}-{port}.log").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", child)
        yield child, port
    finally:
        child.terminate()


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def py_spy() -> str | None:
    """py-spy if installed (PY_SPY=/path/to/py-spy, beside this Python (the dev
    dependencies of .venv), or on PATH)."""
    return (os.environ.get("PY_SPY")
            or shutil.which("py-spy", path=os.path.dirname(sys.executable))
            or shutil.which("py-spy"))


@contextlib.contextmanager
def profiled(pid: int, profile_dir: Path | None, name: str) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs (no-op without --profile/py-spy).

    Writes `<name>.txt`: collapsed stacks (flamegraph.pl / speedscope input).
    """
    exe = py_spy()
    if profile_dir is None or exe is None:
        yield
        return
    profile_dir.mkdir(parents=True, exist_ok=True)
    out = profile_dir / f"{name}.txt"
    log = open(profile_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking",
         "--output", str(out)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.3)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

"""Child processes (`livefeed ...` roles and baselines) for `up --workers`, `compare`,
`bench` and the end-to-end tests: start, restart, kill, drain, read their log."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from livefeed.core.settings import Settings, to_env


def child_env(settings: Settings | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any LIVEFEED_* variable, then exactly `settings`
    (none: the embedded default), then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    if settings is not None:
        env.update(to_env(settings))
    env.update(extra or {})
    return env


def livefeed_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "livefeed.ops.cli", *args]


class Child:
    """One child process, its output appended to `log_path`; `start()` again restarts it."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path,
                 name: str | None = None) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.name = name or log_path.stem
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Child:
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            if self.starts > 1:
                log.write(f"--- start {self.starts}: {' '.join(self.argv[1:])}\n".encode())
                log.flush()
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, "start() first"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no ack, no goodbye."""
        if self.popen is not None:
            if self.alive():
                self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait for the drain; its exit code, or None if it had to be killed."""
        if self.popen is None:
            return None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

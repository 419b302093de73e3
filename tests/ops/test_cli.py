"""The `livefeed` command as a user runs it: real processes, real output."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from livefeed.core import auth
from livefeed.core.embedded import free_port
from livefeed.ops import cli, commands
from livefeed.ops.cli import build_parser
from tests.procs import Proc, wait_http


def livefeed(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    return subprocess.run([sys.executable, "-m", "livefeed.ops.cli", *args], capture_output=True,
                          text=True, env={**clean, **(env or {})}, timeout=60)


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)  # type: ignore[arg-type]


def test_help_explains_every_command() -> None:
    top = livefeed("--help")
    assert top.returncode == 0
    for name in subcommands():
        assert name in top.stdout
        sub = livefeed(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "LIVEFEED_REDIS_URL" in sub.stdout  # every command takes the same settings


def test_every_command_module_is_registered() -> None:
    """A module in ops/commands with a `register` is one of the CLI's commands."""
    for info in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        assert register is None or register in cli.COMMANDS, info.name


def test_token_is_alone_on_stdout_and_verifies(tmp_path: Path) -> None:
    env = {"LIVEFEED_DATA_DIR": str(tmp_path)}
    user = livefeed("token", "alice", env=env)
    admin = livefeed("token", "ops", "--admin", "--ttl", "60", env=env)
    assert user.returncode == 0 and admin.returncode == 0
    secret = (tmp_path / "secret").read_text()
    claims = auth.verify(secret, user.stdout.strip())
    assert (claims.user, claims.admin) == ("alice", False)
    claims = auth.verify(secret, admin.stdout.strip())
    assert (claims.user, claims.admin) == ("ops", True)
    assert claims.exp <= time.time() + 60


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({"LIVEFEED_DELIVERY": "kafka"}, "LIVEFEED_DELIVERY"),
        ({"LIVEFEED_REDIS_URL": "redis://127.0.0.1:1/0",
          "LIVEFEED_DATABASE_URL": "postgresql://root@127.0.0.1:5432/test"}, "LIVEFEED_REDIS_URL"),
        ({"LIVEFEED_REDIS_URL": "redis://127.0.0.1:6379/0",
          "LIVEFEED_DATABASE_URL": "postgresql://root@127.0.0.1:1/test"}, "LIVEFEED_DATABASE_URL"),
        ({"LIVEFEED_REDIS_URL": "http://nope"}, "LIVEFEED_REDIS_URL"),
    ],
)
def test_wrong_setting_fails_with_one_line(env: dict[str, str], expect: str) -> None:
    done = livefeed("migrate", env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in done.stderr


def test_up_runs_on_the_embedded_default(tmp_path: Path) -> None:
    """What the README's `ops/up` does: no URLs set, real servers started, URLs printed."""
    port = free_port()
    data = tmp_path / "data"
    proc = Proc(["up", "--port", str(port)], None, tmp_path,
                extra_env={"LIVEFEED_DATA_DIR": str(data)}, name="up").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        runtime = (data / "runtime.json").read_text()
        assert "redis://127.0.0.1:" in runtime and "postgresql://" in runtime
        # another command beside `up` reaches the same embedded servers with no setting
        migrate = livefeed("migrate", env={"LIVEFEED_DATA_DIR": str(data)})
        assert migrate.returncode == 0 and "up to date" in migrate.stdout, migrate.stderr
        assert proc.terminate() == 0, proc.output()
        out = proc.output()
        assert "embedded  Redis" in out and "embedded  PostgreSQL" in out
        assert f"http://127.0.0.1:{port}/#token=" in out
        assert not (data / "runtime.json").exists()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.kill()

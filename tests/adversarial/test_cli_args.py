"""Hostile arguments to the operator CLI, run against the suite's servers: a bad argument
exits 2 with argparse's one-line reason, a hostile id or name that is well-formed input
exits 1 with a clear message; never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from livefeed.core.settings import to_env
from tests.adversarial.conftest import TALLY, Target

HUGE = "9" * 5000

# (args, exit status, text expected on stderr)
RUNS: list[tuple[tuple[str, ...], int, str]] = [
    (("pending", "--limit", "²"), 2, "argument --limit"),
    (("pending", "--limit", "๙"), 2, "argument --limit"),
    (("pending", "--limit", HUGE), 2, "argument --limit"),
    (("pending", "--limit", "0"), 2, "argument --limit"),
    (("pending", "--min-idle", "๙s"), 2, "argument --min-idle"),
    (("pending", "--min-idle", "9" * 400 + "d"), 2, "argument --min-idle"),
    (("claim", "--group", "fanout", "--min-idle", "3651d"), 2, "argument --min-idle"),
    (("claim", "--group", "fanout", "--min-idle", "1s", "--limit", str(1 << 64)), 2,
     "argument --limit"),
    (("dead", "list", "--limit", "１"), 2, "argument --limit"),
    (("dead", "list", "--limit", "-1"), 2, "argument --limit"),
    (("send", "--count", HUGE), 2, "argument --count"),
    (("send", "--batch", "0"), 2, "argument --batch"),
    (("send", "--seed", "²"), 2, "argument --seed"),
    (("token", "bob", "--ttl", "0"), 2, "argument --ttl"),
    (("token", "bob", "--ttl", HUGE), 2, "argument --ttl"),
    (("token", "[/oops]"), 2, "argument user"),
    (("consumer", "fanout", "--own-partitions", "0-99999999999"), 2,
     "argument --own-partitions"),
    (("consumer", "fanout", "--own-partitions", "²"), 2, "argument --own-partitions"),
    (("gateway", "--port", "๙"), 2, "argument --port"),
    (("gateway", "--workers", "0"), 2, "argument --workers"),
    (("status", "--partitions", "²"), 2, "LIVEFEED_PARTITIONS"),
    (("dead", "show", "²/1-1"), 1, "no dead letter"),
    (("dead", "show", f"{HUGE}/1-1"), 1, "no dead letter"),
    (("dead", "show", "0/99999999999999999999999-0"), 1, "no dead letter"),
    (("dead", "retry", "0/๙-1", "0/-"), 1, ""),
    (("pending", "--group", "[/oops]\x1b[31m"), 1, "no group"),
    (("pending", "--min-idle", "3650d"), 0, ""),
    (("status",), 0, ""),
]


def run(target: Target, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    return subprocess.run([sys.executable, "-m", "livefeed.ops.cli", *args], text=True,
                          capture_output=True, timeout=120,
                          env={**clean, **to_env(target.settings), "COLUMNS": "160"})


@pytest.mark.parametrize(("args", "status", "text"), RUNS,
                         ids=[" ".join(r[0])[:40] for r in RUNS])
def test_hostile_cli_argument(target: Target, args: tuple[str, ...], status: int,
                              text: str) -> None:
    result = run(target, args)
    TALLY.record("cli args", f"exit {result.returncode}")
    assert result.returncode == status, result.stderr[-500:]
    assert "Traceback" not in result.stderr and text in result.stderr
    assert "\x1b" not in result.stderr + result.stdout

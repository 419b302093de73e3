"""`livefeed up --cluster` as a user runs it: an embedded Redis Cluster, the nodes printed,
ready, events sent beside it persisted; no node left after Ctrl-C."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from livefeed.core.embedded import free_port
from tests.procs import Proc, wait_http


async def test_up_cluster_starts_an_embedded_cluster(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {"LIVEFEED_DATA_DIR": str(data)}
    # The shared PostgreSQL (a fresh schema): the embedded one is covered by tests/ops.
    proc = Proc(
        ["up", "--cluster", "--port", str(port)],
        None,
        tmp_path,
        extra_env={**env, "LIVEFEED_DATABASE_URL": database_url},
        name="up",
    ).start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", timeout=90, proc=proc)
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["ready"] and ready["checks"]["redis"] == "ok", ready

        out = proc.output()
        nodes = re.findall(r"node +redis://127\.0\.0\.1:\d+ +(primary|replica) +pid (\d+)", out)
        assert sorted(role for role, _ in nodes) == ["primary"] * 3 + ["replica"] * 3, out
        assert "embedded  Redis Cluster" in out and "(cluster)" in out

        # a command beside `up` finds the cluster (and that it is one) with no setting
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
        send = subprocess.run(
            [sys.executable, "-m", "livefeed.ops.cli", "send", "--user", "demo", "--count", "3"],
            capture_output=True,
            text=True,
            env={**clean, **env},
            timeout=60,
        )
        assert send.returncode == 0 and "3 accepted" in send.stdout, send.stderr
        token = re.search(r"/#token=(\S+)", out)
        assert token is not None
        deadline = time.monotonic() + 30
        while (
            len(items := httpx.get(f"{base}/v1/feed", headers={
                "authorization": f"Bearer {token[1]}"}).json()["items"])
            < 3
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert len(items) == 3

        assert proc.terminate() == 0, proc.output()
        pids = [int(pid) for _, pid in nodes]
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    finally:
        proc.kill()

"""Consumers' readiness follows their role: with PostgreSQL cut off, a `persist` consumer
is unready (it cannot do its work) and a `fanout` consumer stays ready (it never needs
the database); both come back by themselves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from livefeed.core.embedded import free_port
from livefeed.core.settings import Settings
from livefeed.ops.faultproxy import FaultProxy
from tests.helpers.waiting import eventually
from tests.procs import Proc, running


async def readyz(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"http://127.0.0.1:{port}/readyz")
    except httpx.HTTPError:
        return None  # not listening yet
    return r.status_code, r.json()


async def test_readiness_follows_the_role(settings_factory: Callable[..., Settings],
                                          database_url: str, tmp_path: Path) -> None:
    async with FaultProxy.for_url(database_url) as proxy:
        settings = settings_factory(database_url=proxy.url_for(database_url))
        ports = {"persist": free_port(), "fanout": free_port()}
        procs = [Proc(["consumer", role, "--name", f"probe-{role}", "--metrics-port",
                       str(port)], settings, tmp_path, name=f"probe-{role}").start()
                 for role, port in ports.items()]
        with running(*procs):
            answers: dict[str, tuple[int, dict[str, Any]] | None] = {}

            async def answered(want: dict[str, int]) -> bool:
                for role, port in ports.items():
                    answers[role] = await readyz(port)
                return all((a := answers[role]) is not None and a[0] == status
                           for role, status in want.items())

            await eventually(lambda: answered({"persist": 200, "fanout": 200}),
                             what="both ready", procs=procs, interval=0.2, timeout=60)
            persist, fanout = answers["persist"], answers["fanout"]
            assert persist is not None and fanout is not None
            assert set(persist[1]["checks"]) == {"redis", "postgres"}
            assert set(fanout[1]["checks"]) == {"redis"}

            proxy.cut()
            await eventually(lambda: answered({"persist": 503, "fanout": 200}),
                             what="persist unready, fanout ready", procs=procs, interval=0.2)
            persist = answers["persist"]
            assert persist is not None and persist[1]["failed"] == ["postgres"]
            assert persist[1]["checks"]["redis"] == "ok"

            proxy.restore()
            await eventually(lambda: answered({"persist": 200, "fanout": 200}),
                             what="both ready again", procs=procs, interval=0.2)
            async with httpx.AsyncClient(timeout=10) as http:
                for port in ports.values():
                    assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
                    metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                    assert "livefeed_partitions_owned" in metrics
            for proc in procs:  # SIGTERM still drains and exits cleanly
                assert proc.terminate() == 0, proc.output()
                assert "Traceback" not in proc.output()

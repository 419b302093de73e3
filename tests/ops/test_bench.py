"""`livefeed bench --quick` runs every benchmark end to end (speed is never asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from livefeed.ops.bench.command import BENCHMARKS


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_bench_reports_every_benchmark(redis_url: str, postgres_url: str,
                                             tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    env |= {"LIVEFEED_REDIS_URL": redis_url, "LIVEFEED_DATABASE_URL": postgres_url,
            "LIVEFEED_DATA_DIR": str(tmp_path / "data")}
    # `article` has a test of its own (below): not run twice.
    names = [n for n in BENCHMARKS if n != "article"]
    proc = subprocess.run([sys.executable, "-m", "livefeed.ops.cli", "bench", *names, "--quick",
                           "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["quick"] is True
    machine = report["machine"]
    for field in ("cpu", "cores", "memory_gb", "python", "redis", "postgres", "commit", "date"):
        assert machine[field], field
    assert set(report["benchmarks"]) == set(names)
    for name, bench in report["benchmarks"].items():
        assert bench["error"] is None, (name, bench["error"])
        assert bench["rows"], name
        for row in bench["rows"]:
            assert row["value"] > 0 and row["baseline"] > 0, (name, row)
            assert math.isclose(row["ratio"], row["value"] / row["baseline"]), (name, row)
            assert row["baseline_name"] and row["unit"], (name, row)
            if row["goal"] is not None:
                assert isinstance(row["passed"], bool), (name, row)
    assert "livefeed bench --quick" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_article_bench_has_the_articles_table(redis_url: str, postgres_url: str,
                                                    tmp_path: Path) -> None:
    """`bench article --quick`: every figure of the article for `list` and `streams`,
    against the naive `pubsub`; round trips are counted, so their order is certain."""
    out = tmp_path / "article.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    env |= {"LIVEFEED_REDIS_URL": redis_url, "LIVEFEED_DATABASE_URL": postgres_url,
            "LIVEFEED_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "livefeed.ops.cli", "bench", "article",
                           "--quick", "--json", str(out)], env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bench = json.loads(out.read_text())["benchmarks"]["article"]
    rows = {r["name"]: r for r in bench["rows"]}
    figures = ("throughput", "DB round trips", "inbox sync 1,000", "live p50", "live p99")
    assert set(rows) == {f"{m}: {f}" for m in ("list", "streams") for f in figures}
    for r in rows.values():
        assert r["baseline_name"] == "pubsub (naive)"
        assert r["value"] > 0 and r["baseline"] > 0, r
        assert (r["goal"] is not None) == (r["name"].startswith("list:")
                                           and "p99" not in r["name"]), r
    # The naive design runs at least one statement per newsletter; a batch one per batch.
    assert rows["list: DB round trips"]["baseline"] >= 1000
    assert rows["list: DB round trips"]["value"] < rows["list: DB round trips"]["baseline"]
    assert rows["streams: DB round trips"]["value"] < rows["streams: DB round trips"]["baseline"]
    assert any("article's claims" in n for n in bench["notes"])


def test_unknown_benchmark_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    proc = subprocess.run([sys.executable, "-m", "livefeed.ops.cli", "bench", "nosuch"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown benchmark nosuch" in proc.stderr


def test_profile_summary_ranks_innermost_frames(tmp_path: Path) -> None:
    from livefeed.ops.bench.profile import summarize

    path = tmp_path / "p.txt"
    path.write_text(
        "main (/x/ops/cli.py:1);send (/v/site-packages/uvicorn/ws.py:9) 30\n"
        "main (/x/ops/cli.py:1);decode (/x/schemas/event.py:5) 10\n"
    )
    total, frames = summarize(path)
    assert total == 40
    assert frames == [("send (uvicorn/ws.py)", 75.0), ("decode (schemas/event.py)", 25.0)]


# Issue 13's baselines (`livefeed bench speed`, `conn-memory`): each measures at a tiny
# size and gives numbers; speeds are never asserted.

def _ctx(tmp_path: Path, redis_url: str = "redis://127.0.0.1:1/0",
         postgres_url: str = "postgresql://nobody@127.0.0.1:1/none") -> Any:
    from livefeed.core.settings import Resolved
    from livefeed.ops.bench.runner import Context

    settings = Resolved(redis_url=redis_url, database_url=postgres_url)
    return Context(settings=settings, quick=True, workdir=tmp_path / "run")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("server,shape", [("raw", "tabs"), ("raw", "users"), ("node", "tabs"),
                                          ("granian", "users"), ("picows", "users")])
async def test_speed_baseline_measures(server: str, shape: str, redis_url: str,
                                       postgres_url: str, tmp_path: Path) -> None:
    from livefeed.ops.bench import speed
    from livefeed.ops.bench.speedservers import SERVERS

    why = SERVERS[server].available()
    if why is not None:  # the bench skips it too (said in its notes); here: visibly skipped
        pytest.skip(why)
    ctx = _ctx(tmp_path, redis_url, postgres_url)
    errors: list[str] = []
    measured = await speed.run_cases(ctx, [(server, shape)], n=20, rounds=3, errors=errors)
    assert errors == []
    got = measured[server, shape]
    assert got.frames_per_s > 0
    # CPU is read in clock ticks: at this size it may round to 0.
    assert got.cpu_us_per_frame >= 0 and got.client_busy >= 0 and got.client_us_per_frame >= 0
    assert math.isfinite(got.kib_per_conn)
    assert got.closed == {}


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_speed_gateway_tabs_holds_more_sockets_than_the_user_limit(
        redis_url: str, postgres_url: str, tmp_path: Path) -> None:
    from livefeed.core.settings import Settings
    from livefeed.ops.bench import speed

    n = Settings().max_user_connections + 8  # all of them one user's tabs
    errors: list[str] = []
    measured = await speed.run_cases(_ctx(tmp_path, redis_url, postgres_url),
                                     [("gateway", "tabs")], n=n, rounds=2, errors=errors)
    assert errors == []
    assert measured["gateway", "tabs"].frames_per_s > 0


def test_speed_reports_the_ceiling_the_clients_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from livefeed.ops.bench import speed
    from livefeed.ops.bench.runner import BenchResult

    monkeypatch.setattr(speed.os, "cpu_count", lambda: 2)
    m = {("gateway", "users"): speed.Measured(frames_per_s=30_000, cpu_us_per_frame=20.0,
                                              kib_per_conn=7.0, client_busy=0.4,
                                              client_us_per_frame=25.0),
         ("gateway", "tabs"): speed.Measured(frames_per_s=120_000, cpu_us_per_frame=5.0,
                                             kib_per_conn=6.0, client_busy=0.6,
                                             client_us_per_frame=10.0)}
    result = BenchResult(name="speed")
    speed._rows(result, m, 3000)
    rows = {r.name: r for r in result.rows}
    users = rows["most frames/s the clients could take on all 2 cores, 3000 users"]
    assert (users.value, users.baseline, users.ratio) == (80_000, 100_000, 0.8)
    tabs = rows["most frames/s the clients could take on all 2 cores, 3000 tabs of one user"]
    assert tabs.value == 200_000
    client = rows["client harness CPU per frame, 3000 users"]
    assert (client.value, client.baseline) == (25.0, 20.0)


def test_node_baseline_skips_cleanly_without_node(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from livefeed.ops.bench import nodews, speed
    from livefeed.ops.bench.speedservers import SERVERS

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(nodews.Unavailable, match="node/npm not on PATH"):
        nodews.prepare(tmp_path / "cache")
    assert SERVERS["node"].available() == "node/npm not on PATH"
    ctx = _ctx(tmp_path)
    errors: list[str] = []
    # No server is started for a skipped case, so no Redis or PostgreSQL is needed.
    measured = anyio.run(speed.run_cases, ctx, [("node", "tabs"), ("node-send", "tabs")], 20, 3,
                         errors)
    assert measured == {} and errors == []
    assert ctx.notes == ["skipped Node ws, pre-encoded frame: node/npm not on PATH",
                         "skipped Node ws, ws.send per socket: node/npm not on PATH"]


def test_node_install_failure_is_a_skip_reason(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from livefeed.ops.bench import nodews

    fake = tmp_path / "bin"
    fake.mkdir()
    for name, body in (("node", "exit 0"), ("npm", "echo 'registry unreachable' >&2; exit 1")):
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.raises(nodews.Unavailable, match="npm install failed .*registry unreachable"):
        nodews.prepare(tmp_path / "cache")


def test_raw_floor_frames_and_handshake() -> None:
    from livefeed.ops.bench.rawws import accept_key, bearer, text_frame

    # RFC 6455 section 1.3's example
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 300)[:4] == b"\x81\x7e\x01\x2c"
    assert text_frame(b"x" * 70_000)[:10] == b"\x81\x7f" + (70_000).to_bytes(8, "big")
    # The user comes from the Authorization header (its scheme in any case), never the URL.
    assert bearer(b"Bearer a.b.c") == bearer(b"bearer a.b.c ") == "a.b.c"
    assert bearer(b"Basic a.b.c") == bearer(b"") == ""


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_conn_memory_breaks_down_an_idle_connection(redis_url: str, postgres_url: str,
                                                          tmp_path: Path) -> None:
    from livefeed.ops.bench import connmem
    from livefeed.ops.bench.runner import BenchResult

    ctx = _ctx(tmp_path, redis_url, postgres_url)
    result = BenchResult(name="conn-memory")
    ctx.notes = result.notes
    await connmem.run(ctx, result)
    (heap,) = result.rows
    assert heap.value > 0 and heap.baseline > 0
    text = "\n".join(result.notes)
    for view in ("site", "livefeed line", "library"):
        assert f"heap per connection by {view}: " in text
    assert "gc-tracked objects per connection by type" in text


def test_profiles_become_speedscope_flame_graphs(tmp_path: Path) -> None:
    from livefeed.ops.bench.flame import convert

    (tmp_path / "e2e-gateway.txt").write_text(
        "main (a.py:1);send (ws.py:9) 30\nmain (a.py:1);decode (e.py:5) 10\n")
    (out,) = convert(tmp_path)
    doc = json.loads(out.read_text())
    assert out.name == "e2e-gateway.speedscope.json"
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert names == ["main (a.py:1)", "send (ws.py:9)", "decode (e.py:5)"]
    (prof,) = doc["profiles"]
    assert prof["type"] == "sampled" and prof["endValue"] == 40
    assert prof["samples"] == [[0, 1], [0, 2]] and prof["weights"] == [30, 10]


def test_bench_clients_count_every_frame_of_a_coalesced_message() -> None:
    from livefeed.ops.bench.clients import Clients, Spec, sent_at
    from livefeed.schemas import frames

    def event(n: int, preview: str = "x") -> bytes:
        return frames.event_frame(f"{n}-0", b'{"preview":"%s"}' % preview.encode())

    recovered = frames.encode_frame(frames.Recovered(count=2, last_id="2-0"))
    # The message that ends a replay may go on with live events: they count as live frames.
    clients = Clients(Spec("ws://unused/v1/ws", [], mode="latency", last_id="0-0"))
    start = time.perf_counter()
    assert not clients._recovering([event(1)], start)
    live = event(4, sent_at(time.monotonic_ns()))
    assert clients._recovering(frames.split_message(b"\n".join(
        [event(2), event(3), recovered, live])), start)
    assert (clients.frames, clients.events, len(clients.recovered)) == (5, 4, 1)
    assert len(clients.latencies) == 1

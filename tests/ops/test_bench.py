"""`livefeed bench --quick` runs every benchmark end to end (speed is never asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from livefeed.ops.bench.command import BENCHMARKS


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_reports_every_benchmark(redis_url: str, postgres_url: str,
                                             tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    env |= {"LIVEFEED_REDIS_URL": redis_url, "LIVEFEED_DATABASE_URL": postgres_url,
            "LIVEFEED_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "livefeed.ops.cli", "bench", "--quick", "--json",
                           str(out)], env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["quick"] is True
    machine = report["machine"]
    for field in ("cpu", "cores", "memory_gb", "python", "redis", "postgres", "commit", "date"):
        assert machine[field], field
    assert set(report["benchmarks"]) == set(BENCHMARKS)
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

"""The machine a run happened on, and the run's table (rich) and JSON."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

import asyncpg
import msgspec
from rich.console import Console
from rich.table import Table

from livefeed.core import redis_client
from livefeed.ops.bench.runner import BenchResult


class Machine(msgspec.Struct, kw_only=True):
    cpu: str
    cores: int
    memory_gb: float
    python: str
    event_loop: str
    redis: str
    postgres: str
    commit: str
    date: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    other_pytest_processes: int = 0


class Report(msgspec.Struct, kw_only=True):
    machine: Machine
    quick: bool
    benchmarks: dict[str, BenchResult]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def other_pytest_processes() -> int:
    """How many pytest processes of other people ran beside us (the machine is shared)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"pytest" in cmd and b"test_bench" not in cmd:
            count += 1
    return count


async def describe_machine(redis_url: str, database_url: str) -> Machine:
    client = redis_client.connect(redis_url)
    try:
        info = await client.info("server")
        redis_version = str(info.get("redis_version", "?"))
    finally:
        await client.aclose()
    conn = await asyncpg.connect(database_url)
    try:
        pg_version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    try:
        from importlib.metadata import version

        loop = f"uvloop {version('uvloop')}"
    except ImportError:
        loop = "asyncio"
    return Machine(
        cpu=_cpu_model(), cores=os.cpu_count() or 0, memory_gb=_memory_gb(),
        python=platform.python_version(), event_loop=loop, redis=redis_version,
        postgres=pg_version, commit=_git_commit(),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load_before=os.getloadavg(), other_pytest_processes=other_pytest_processes(),
    )


def _fmt(value: float) -> str:
    if value != value:  # nan
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render(report: Report, console: Console) -> None:
    m = report.machine
    console.print(
        f"[bold]livefeed bench[/bold]{' --quick' if report.quick else ''}  {m.date}  "
        f"commit {m.commit}\n{m.cpu}, {m.cores} cores, {m.memory_gb} GB; Python {m.python} "
        f"({m.event_loop}); Redis {m.redis}; PostgreSQL {m.postgres}\n"
        f"load average before {m.load_before[0]:.2f}, after {m.load_after[0]:.2f}; "
        f"{m.other_pytest_processes} other pytest processes running at start"
    )
    table = Table(show_lines=False)
    for col in ("bench", "figure", "value", "baseline", "baseline value", "ratio", "goal",
                "result"):
        table.add_column(col, justify="right" if "value" in col or col == "ratio" else "left")
    for name, res in report.benchmarks.items():
        if res.error:
            table.add_row(name, "[red]error (below)[/red]", "", "", "", "", "", "")
        for r in res.rows:
            verdict = ("" if r.passed is None
                       else "[green]pass[/green]" if r.passed else "[red]miss[/red]")
            table.add_row(name, r.name, f"{_fmt(r.value)} {r.unit}", r.baseline_name,
                          f"{_fmt(r.baseline)} {r.unit}", f"{r.ratio:.2f}x", r.goal or "",
                          verdict)
    console.print(table)
    for name, res in report.benchmarks.items():
        if res.error:
            console.print(f"  [red]{name} failed:[/red] {res.error}")
        for note in res.notes:
            console.print(f"  [dim]{name}:[/dim] {note}")


def to_json(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report))

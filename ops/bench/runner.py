"""Shared machinery of `livefeed bench`: results, the run context, fresh namespaces.

Every figure is reported beside a baseline measured in the same run, on the same
servers and data, as a ratio; a goal, a bound on the ratio or on the value (e.g. persist
>= 0.6x of a raw UNNEST insert, e2e p99 < 5 ms), says whether it passes.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from livefeed.core.settings import Resolved
from livefeed.ops.namespace import throwaway_namespace

logger = logging.getLogger(__name__)

Op = Literal[">=", "<=", "<"]


class Goal(msgspec.Struct, frozen=True):
    """`on` the ratio or the value itself must be `op` `limit`."""

    on: Literal["ratio", "value"]
    op: Op
    limit: float

    def check(self, value: float, ratio: float) -> bool:
        x = ratio if self.on == "ratio" else value
        if self.op == ">=":
            return x >= self.limit
        if self.op == "<=":
            return x <= self.limit
        return x < self.limit

    def text(self, unit: str) -> str:
        if self.on == "ratio":
            return f"ratio {self.op} {self.limit:g}"
        return f"{self.op} {self.limit:g} {unit}"


class Row(msgspec.Struct, kw_only=True):
    """One figure beside its baseline. `ratio` = value / baseline."""

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    ratio: float
    goal: str | None = None
    passed: bool | None = None
    note: str = ""


def row(name: str, value: float, unit: str, baseline_name: str, baseline: float,
        goal: Goal | None = None, note: str = "") -> Row:
    ratio = value / baseline if baseline else float("inf")
    return Row(
        name=name, value=value, unit=unit, baseline_name=baseline_name, baseline=baseline,
        ratio=ratio, goal=goal.text(unit) if goal else None,
        passed=goal.check(value, ratio) if goal else None, note=note,
    )


class BenchResult(msgspec.Struct, kw_only=True):
    name: str
    rows: list[Row] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Context:
    """What every benchmark gets: resolved servers, the size of the run, a work dir."""

    settings: Resolved
    quick: bool
    workdir: Path
    profile_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def size(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def note(self, text: str) -> None:
        """A line for the report: what shares what, what was simplified, what was missing."""
        self.notes.append(text)
        logger.info("%s", text)

    @contextlib.asynccontextmanager
    async def namespace(self, **overrides: Any) -> AsyncIterator[Resolved]:
        """Settings with their own key prefix and migrated Postgres schema, removed after
        (on the run's Redis, or on `redis_url` with `cluster` when given)."""
        # Benchmarks open thousands of connections at once: admission limits are not what
        # they measure (a case may still set its own).
        overrides.setdefault("connect_rate", max(self.settings.connect_rate, 100_000.0))
        redis_url = overrides.pop("redis_url", self.settings.redis_url)
        cluster = overrides.pop("cluster", self.settings.redis_cluster)
        async with throwaway_namespace(redis_url, self.settings.database_url,
                                       label="lfb", cluster=cluster) as ns:
            yield msgspec.structs.replace(
                self.settings, redis_url=redis_url, redis_cluster=cluster,
                prefix=ns.prefix, database_url=ns.database_url,
                secret=uuid.uuid4().hex * 2, webhook_secret=uuid.uuid4().hex * 2,
                data_dir=str(self.workdir / ns.prefix), log_level="WARNING", **overrides,
            )


Benchmark = Callable[[Context, BenchResult], Awaitable[None]]


async def run_one(name: str, bench: Benchmark, ctx: Context) -> BenchResult:
    result = BenchResult(name=name)
    ctx.notes = result.notes
    start = time.perf_counter()
    try:
        await bench(ctx, result)
    except Exception as exc:  # one benchmark's failure must not hide the others' figures
        logger.exception("benchmark %s failed", name)
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - start
    return result


class Timer:
    """`with Timer() as t: ...; t.seconds`"""

    seconds: float = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


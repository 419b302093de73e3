"""Running cells: one (scenario, mode) on a fresh deployment, then the whole matrix.

A cell: start the processes, connect every client and wait for its `hello`, run the load
and the scenario script side by side, let the system settle (until every client has every
accepted event of its user and Postgres every row, or nothing moved for a while), then
count. The seed fixes event ids, user picks and the scenario's choices; every mode of a
scenario gets the same ones.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec

from livefeed.core import auth
from livefeed.core.embedded_cluster import ClusterError, EmbeddedCluster
from livefeed.core.settings import Resolved, env_name
from livefeed.ops.compare.clients import FeedClient, NotReady
from livefeed.ops.compare.deployment import Deployment, DeploymentError, monotonic_clock
from livefeed.ops.compare.load import Auth, LoadGenerator
from livefeed.ops.compare.measure import CellResult, ClientCount, count_clients, summarize
from livefeed.ops.compare.records import ClientLog, Sent
from livefeed.ops.compare.scenarios import Context, Scenario

logger = logging.getLogger(__name__)

# With nothing new arriving for this long, what is missing stays missing. Streams mode
# waits longer: the persist consumer backs off up to 5 s while the database is away.
QUIET_S = {"pubsub": 2.0, "list": 3.0, "streams": 12.0}
STOP_TIMEOUT_S = 5.0

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Params:
    duration: float = 8.0
    clients: int = 8
    rate: float = 200.0
    seed: int = 1
    settle_s: float = 45.0
    auth: Auth = "admin"


@dataclass
class CellRun:
    """A cell's result and the raw records it was counted from (for tests and debugging)."""

    result: CellResult
    sent: list[Sent]
    logs: list[ClientLog]
    counts: list[ClientCount]


def users_for(clients: int) -> list[str]:
    """Two clients (tabs) per user: fan-out to several connections of one user is covered."""
    return [f"user{i}" for i in range(max(1, clients // 2))]


async def run_cell(base: Resolved, scenario: Scenario, mode: str, params: Params,
                   log_dir: Path, progress: Progress | None = None, *,
                   cluster: EmbeddedCluster | None = None,
                   replicas: int | None = None) -> CellRun:
    """`cluster`: the embedded cluster `base` points at (scenarios that kill its nodes need
    it); `replicas`: this cell's LIVEFEED_INGEST_REPLICAS (None: the deployment's)."""
    cell = CellResult(scenario=scenario.name, mode=mode, seed=params.seed,
                      duration_s=params.duration, clients=params.clients, rate=params.rate,
                      ingest_replicas=replicas)
    run = CellRun(result=cell, sent=[], logs=[], counts=[])
    if scenario.needs_cluster and cluster is None:
        cell.skipped = ("needs the embedded cluster (`compare --cluster` with no "
                        f"{env_name('redis_url')}): it kills a primary")
        return run
    env = dict(scenario.env)
    if replicas is not None:
        env[env_name("ingest_replicas")] = str(replicas)
    try:
        await _run(run, base, scenario, mode, params, log_dir, progress or _no_progress,
                   env, cluster)
    except* (DeploymentError, NotReady, TimeoutError, ClusterError) as group:
        cell.failed = "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions)
        logger.warning("%s/%s failed: %s (logs in %s)", scenario.name, mode, cell.failed,
                       log_dir)
    return run


def _no_progress(fraction: float, status: str) -> None:
    pass


async def _run(run: CellRun, base: Resolved, scenario: Scenario, mode: str, params: Params,
               log_dir: Path, progress: Progress, env: dict[str, str],
               cluster: EmbeddedCluster | None) -> None:
    rng = random.Random(f"{params.seed}:{scenario.name}")
    clock = monotonic_clock()
    progress(0.0, "starting processes")
    async with Deployment(base, mode=mode, log_dir=log_dir, env=env) as deployment:
        await deployment.start(gateways=scenario.gateways, consumers=mode != "pubsub",
                            db_proxy=scenario.db_proxy)
        users = users_for(params.clients)
        clients = [
            FeedClient(f"client{i}", users[i % len(users)], auth.mint(deployment.secret,
                       users[i % len(users)]), deployment.gateway_urls, clock=clock, mode=mode,
                       first_gateway=i % scenario.gateways,
                       small_buffer=i >= params.clients - scenario.slow_clients)
            for i in range(params.clients)
        ]
        run.logs = [c.log for c in clients]
        urls = deployment.gateway_urls
        targets = urls[scenario.load_gateway:] + urls[: scenario.load_gateway]
        load = LoadGenerator(
            targets, users, rate=params.rate, duration=params.duration,
            seed=rng.getrandbits(64), clock=clock, auth_mode=params.auth,
            secret=deployment.secret, webhook_secret=deployment.webhook_secret,
            preview_chars=scenario.preview_chars, weights=_weights(users, params, scenario),
        )
        run.sent = load.sent
        async with anyio.create_task_group() as ctg:
            for c in clients:
                ctg.start_soon(c.run)
            progress(0.0, "connecting clients")
            async with anyio.create_task_group() as tg:
                for c in clients:
                    tg.start_soon(c.wait_ready)
            ctx = Context(deployment=deployment, clients=clients, load=load, clock=clock,
                          started=clock(), duration=params.duration, rng=rng, cluster=cluster)
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                tg.start_soon(scenario.script, ctx)
                tg.start_soon(_report_progress, ctx, progress)
                await load.done.wait()
            run.result.timeline = ctx.marks
            progress(1.0, "settling")
            await _settle(ctx, deployment, mode, params.settle_s)
            with anyio.move_on_after(STOP_TIMEOUT_S):
                async with anyio.create_task_group() as tg:
                    for c in clients:
                        tg.start_soon(c.stop)
            ctg.cancel_scope.cancel()
        rows = await deployment.rows()
    run.counts = count_clients(run.logs, run.sent)
    summarize(run.result, run.sent, run.counts, rows)
    run.result.errors = dict(load.errors)
    run.result.timeline = ctx.marks


def _weights(users: list[str], params: Params, scenario: Scenario) -> list[float] | None:
    """Even, unless the scenario sends `hot_share` of the events to the last client's user."""
    if not scenario.hot_share or len(users) < 2:
        return None
    hot = users[(params.clients - 1) % len(users)]
    rest = (1 - scenario.hot_share) / (len(users) - 1)
    return [scenario.hot_share if u == hot else rest for u in users]


async def _report_progress(ctx: Context, progress: Progress) -> None:
    """Tick the progress display until the load is done."""
    while True:
        frames = sum(len(c.log.received) for c in ctx.clients)
        done = min(1.0, (ctx.clock() - ctx.started) / ctx.duration)
        progress(done, f"accepted {ctx.load.accepted}, frames {frames}")
        if ctx.load.done.is_set():
            return
        await anyio.sleep(0.25)


async def _settle(ctx: Context, deployment: Deployment, mode: str, limit_s: float) -> None:
    """Wait until nothing is missing, or nothing moved for QUIET_S, or `limit_s` passed."""
    accepted = ctx.load.accepted
    quiet = QUIET_S.get(mode, 2.0)
    last_state: tuple[int, int] | None = None
    last_change = ctx.clock()
    with anyio.move_on_after(limit_s):
        while True:
            rows = await deployment.row_count()
            if ctx.missing() == 0 and rows >= accepted:
                return
            state = (sum(len(c.log.received) for c in ctx.clients), rows)
            if state != last_state:
                last_state, last_change = state, ctx.clock()
            elif ctx.clock() - last_change >= quiet:
                return
            await anyio.sleep(0.1)


def variants(scenario: Scenario, mode: str) -> list[int | None]:
    """The LIVEFEED_INGEST_REPLICAS values a scenario runs with in `mode` (None: the
    deployment's own). Only streams mode appends to a stream that WAIT could cover."""
    if mode == "streams" and scenario.replica_variants:
        return list(scenario.replica_variants)
    return [None]


async def run_matrix(base: Resolved, scenarios: Sequence[Scenario], modes: Sequence[str],
                     params: Params, log_root: Path,
                     on_cell: Callable[[str, str], Progress] | None = None, *,
                     cluster: EmbeddedCluster | None = None) -> list[CellRun]:
    """Every scenario in every mode (and replica variant), one after the other, each on its
    own namespace."""
    runs: list[CellRun] = []
    for scenario in scenarios:
        for mode in modes:
            for replicas in variants(scenario, mode):
                shown = mode if replicas is None else f"{mode} replicas={replicas}"
                progress = on_cell(scenario.name, shown) if on_cell else None
                log_dir = log_root / f"{scenario.name}-{shown.replace(' ', '-')}"
                runs.append(await run_cell(base, scenario, mode, params, log_dir, progress,
                                           cluster=cluster, replicas=replicas))
    return runs


def to_json(runs: Sequence[CellRun], params: Params) -> bytes:
    doc = {"params": params.__dict__, "cells": [r.result for r in runs]}
    return msgspec.json.format(msgspec.json.encode(doc))

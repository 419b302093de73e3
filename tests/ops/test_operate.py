"""`livefeed status|pending|claim|dead` as an operator runs them: real processes, real Redis."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis import exceptions as redis_exceptions

from livefeed.core.eventlog import EventLog
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.leases import PartitionLeases
from livefeed.core.settings import Settings, to_env
from livefeed.schemas.event import encode_event
from tests.helpers.streams import event, groups, ingest, log_of, make_stale, poisoned, refs
from tests.helpers.waiting import eventually
from tests.procs import Proc, running


def livefeed(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    return subprocess.run([sys.executable, "-m", "livefeed.ops.cli", *args], capture_output=True,
                          text=True, env={**clean, **to_env(settings), "COLUMNS": "160"},
                          timeout=60)


def table_rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the rich table titled `title` in `text`, as stripped cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return rows


def as_json(settings: Settings, *args: str) -> Any:
    done = livefeed(settings, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def crashed_consumer(redis: Any, keys: Keys) -> list[str]:
    """Six events; `persist-dead` took three and died a while ago, `persist-live` took one."""
    ids = await ingest(redis, keys, 6)
    await groups(redis, keys)
    await redis.xreadgroup(PERSIST_GROUP, "persist-dead", {keys.ingest_of("alice"): ">"}, count=3)
    await make_stale(redis, keys, PERSIST_GROUP, "persist-dead", 300_000)
    await redis.xreadgroup(PERSIST_GROUP, "persist-live", {keys.ingest_of("alice"): ">"}, count=1)
    return ids


async def test_status_pending_and_claim(redis: Any, keys: Keys,
                                        settings_factory: Callable[..., Settings]) -> None:
    ids = await crashed_consumer(redis, keys)
    settings = settings_factory()

    status = as_json(settings, "status")
    assert [(s["name"], s["length"]) for s in status["streams"]] == [("ingest", 6), ("dead", 0)]
    by_group = {g["name"]: g for g in status["groups"]}
    assert (by_group[PERSIST_GROUP]["pending"], by_group[PERSIST_GROUP]["lag"]) == (4, 2)
    assert (by_group[FANOUT_GROUP]["pending"], by_group[FANOUT_GROUP]["lag"]) == (0, 6)
    entry_refs = refs(keys, "alice", ids)
    assert by_group[PERSIST_GROUP]["oldest_pending_id"] == entry_refs[0]

    stale = as_json(settings, "pending", "--group", PERSIST_GROUP, "--min-idle", "30s")
    assert [(e["id"], e["consumer"], e["deliveries"]) for e in stale["entries"]] == [
        (i, "persist-dead", 1) for i in entry_refs[:3]]
    assert stale["entries"][0]["preview"] == "news@example.com: Issue 0"

    dry = as_json(settings, "claim", "--group", PERSIST_GROUP, "--min-idle", "60s", "--dry-run")
    assert dry["to"] == "persist-live" and len(dry["entries"]) == 3
    moved = as_json(settings, "claim", "--group", PERSIST_GROUP, "--min-idle", "1m",
                    "--to", "persist-2")
    assert [(e["id"], e["consumer"]) for e in moved["entries"]] == [
        (i, "persist-dead") for i in entry_refs[:3]]
    after = as_json(settings, "pending", "--consumer", "persist-2")
    assert [(e["id"], e["deliveries"]) for e in after["entries"]] == [
        (i, 2) for i in entry_refs[:3]]

    partition = keys.partition_of("alice")
    lease = PartitionLeases(redis, keys, PERSIST_GROUP, "persist-live", lease_ms=60_000,
                            static=[partition])
    assert (await lease.refresh()).owned == {partition}
    table = livefeed(settings, "status")
    assert table.returncode == 0, table.stderr
    for text in ("Consumer groups", PERSIST_GROUP, FANOUT_GROUP, "persist-live", "persist-2",
                 f"{keys.prefix}:{{*}}:ingest", "Partitions", keys.partitions.tags[partition]):
        assert text in table.stdout
    # partition, tag, ingest, dead, then per group (sorted) its owner (lease) and pending/lag
    parts = table_rows(table.stdout, "Partitions")
    assert [row[:2] for row in parts] == [[str(p), tag]
                                         for p, tag in enumerate(keys.partitions.tags)]
    for p, row in enumerate(parts):
        if p != partition:
            assert row[2:] == ["0", "0", "unowned", "0/0", "unowned", "0/0"], row
    assert parts[partition][2:6] == ["6", "0", "unowned", "0/6"]
    assert parts[partition][6].startswith(f"{lease.token} (") and parts[partition][7] == "4/2"
    rows = livefeed(settings, "pending", "--limit", "2")
    assert rows.returncode == 0 and entry_refs[0] in rows.stdout and "more match" in rows.stdout


async def test_claim_and_pending_errors(redis: Any, keys: Keys,
                                        settings_factory: Callable[..., Settings]) -> None:
    await crashed_consumer(redis, keys)
    settings = settings_factory()
    nope = livefeed(settings, "pending", "--group", "nope")
    assert nope.returncode == 1 and "no group 'nope'" in nope.stderr
    bad = livefeed(settings, "claim", "--group", PERSIST_GROUP, "--min-idle", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


async def test_dead_list_show_retry_drop(redis: Any, keys: Keys,
                                         settings_factory: Callable[..., Settings]) -> None:
    first, event_id, data = await poisoned(redis, keys, "Poison A")
    second, _, _ = await poisoned(redis, keys, "Poison B")
    settings = settings_factory()

    listing = as_json(settings, "dead", "list")
    assert listing["total"] == 2
    assert [(d["id"], d["error"], d["preview"]) for d in listing["letters"]] == [
        (first, "ValueError: bad sender", "news@example.com: Poison A"),
        (second, "ValueError: bad sender", "news@example.com: Poison B")]
    table = livefeed(settings, "dead", "list")
    assert table.returncode == 0 and first in table.stdout and "bad sender" in table.stdout
    shown = as_json(settings, "dead", "show", first)
    assert shown["data"] == data.decode()
    assert livefeed(settings, "dead", "show", "0/1-1").returncode == 1
    assert livefeed(settings, "dead", "show", "1-1").returncode == 1

    retried = as_json(settings, "dead", "retry", first)
    assert [(a["id"], a["outcome"]) for a in retried] == [(first, "retried")]
    [(_, fields)] = await redis.xrange(keys.ingest_of("bob"))
    assert fields[b"event_id"] == event_id.encode() and fields[b"data"] == data

    refused = livefeed(settings, "dead", "drop", second)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert await redis.xlen(keys.dead_of("bob")) == 1
    dropped = livefeed(settings, "dead", "drop", second, "--yes")
    assert dropped.returncode == 0 and f"{second}: dropped" in dropped.stdout
    assert as_json(settings, "dead", "list")["total"] == 0
    again = livefeed(settings, "dead", "retry", first)
    assert again.returncode == 1 and "missing" in again.stdout


async def test_dead_retry_all(redis: Any, keys: Keys,
                              settings_factory: Callable[..., Settings]) -> None:
    for i in range(3):
        await poisoned(redis, keys, f"Poison {i}")
    settings = settings_factory()
    assert livefeed(settings, "dead", "retry").returncode == 1  # neither ids nor --all
    done = livefeed(settings, "dead", "retry", "--all")
    assert done.returncode == 0, done.stderr
    assert "3 of 3 retried" in done.stdout
    assert await redis.xlen(keys.dead_of("bob")) == 0
    assert await redis.xlen(keys.ingest_of("bob")) == 3


@pytest.mark.slow
async def test_crashed_consumer_entries_are_claimed_and_completed(
        redis: Any, keys: Keys, settings_factory: Callable[..., Settings], tmp_path: Path,
        database_url: str) -> None:
    """A real `livefeed consumer persist` is SIGKILLed holding entries; `pending` shows them
    with their owner, `claim` moves them to another consumer name, and a consumer started
    under that name completes them (its own pending first) and acks them."""
    # Consumers here never claim by themselves: only the operator's claim moves entries.
    settings = settings_factory(claim_idle_ms=600_000, flush_ms=50)
    first = Proc(["consumer", "persist", "--name", "persist-a"], settings, tmp_path,
                 name="persist-a").start()
    second = Proc(["consumer", "persist", "--name", "persist-b"], settings, tmp_path,
                  name="persist-b")
    with running(first, second):
        async def consumers() -> set[str]:
            stream = keys.ingest_of("alice")
            if not await redis.exists(stream):
                return set()
            with contextlib.suppress(redis_exceptions.ResponseError):
                return {c["name"].decode() for c in
                        await redis.xinfo_consumers(stream, PERSIST_GROUP)}
            return set()

        await eventually(lambda: _has(consumers(), "persist-a"), what="consumer persist-a",
                         procs=(first,), timeout=60, interval=0.1)
        # Hold the table so persist-a's INSERT waits: its entries stay pending, as in a
        # crash in the middle of a batch.
        lock = await asyncpg.connect(database_url)
        try:
            tx = lock.transaction()
            await tx.start()
            await lock.execute("LOCK TABLE newsletters IN ACCESS EXCLUSIVE MODE")
            ids = await ingest(redis, keys, 5)

            async def held() -> bool:
                summary = await redis.xpending(keys.ingest_of("alice"), PERSIST_GROUP)
                return int(summary["pending"]) == 5

            await eventually(held, what="5 pending entries in persist-a",
                             procs=(first,), timeout=60, interval=0.1)
            first.kill()
            await tx.rollback()
        finally:
            await lock.close()

        stale = as_json(settings, "pending", "--group", PERSIST_GROUP)
        entry_refs = refs(keys, "alice", ids)
        assert [(e["id"], e["consumer"], e["deliveries"]) for e in stale["entries"]] == [
            (i, "persist-a", 1) for i in entry_refs]
        moved = as_json(settings, "claim", "--group", PERSIST_GROUP, "--min-idle", "1ms",
                        "--to", "persist-b")
        assert [(e["id"], e["consumer"]) for e in moved["entries"]] == [
            (i, "persist-a") for i in entry_refs]
        now_b = as_json(settings, "pending", "--group", PERSIST_GROUP)
        assert {(e["consumer"], e["deliveries"]) for e in now_b["entries"]} == {("persist-b", 2)}

        second.start()

        async def drained() -> bool:
            summary = await redis.xpending(keys.ingest_of("alice"), PERSIST_GROUP)
            return int(summary["pending"]) == 0

        await eventually(drained, what="persist-b acking the claimed entries",
                         procs=(second,), timeout=60, interval=0.1)
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetchval("SELECT count(*) FROM newsletters")
        finally:
            await conn.close()
        assert rows == 5
        status = as_json(settings, "status")
        persist = next(g for g in status["groups"] if g["name"] == PERSIST_GROUP)
        assert (persist["pending"], persist["lag"]) == (0, 0)
        assert second.terminate() == 0


async def _has(names: Awaitable[set[str]], name: str) -> bool:
    return name in await names


@pytest.mark.slow
async def test_poison_entry_dead_lettered_then_retried_once_fixed(
        redis: Any, keys: Keys, settings_factory: Callable[..., Settings], tmp_path: Path,
        database_url: str) -> None:
    """A row PostgreSQL refuses becomes a dead letter under a real persist consumer; once
    the cause is fixed, `dead retry` brings it back and it is persisted."""
    db = await asyncpg.connect(database_url)
    try:
        await db.execute("ALTER TABLE newsletters ADD CONSTRAINT no_pills "
                         "CHECK (subject <> 'Poison pill')")
        settings = settings_factory(claim_idle_ms=200, max_deliveries=2, flush_ms=50)
        consumer = Proc(["consumer", "persist", "--name", "persist-1"], settings, tmp_path,
                        name="persist-1").start()
        with running(consumer):
            log = EventLog(redis, keys, feed_maxlen=100, dedupe_ttl_s=60)
            events = [event("carol", s) for s in ("Fine 1", "Poison pill", "Fine 2")]
            await log.append([(str(e.id), e.user_id, encode_event(e)) for e in events])

            async def buried() -> bool:
                return int(await redis.xlen(keys.dead_of("carol"))) == 1

            await eventually(buried, what="a dead letter",
                             procs=(consumer,), timeout=60, interval=0.1)
            [letter] = as_json(settings, "dead", "list")["letters"]
            assert letter["event_id"] == str(events[1].id)
            assert letter["group"] == PERSIST_GROUP and "no_pills" in letter["error"]
            assert letter["preview"] == "news@example.com: Poison pill"
            assert await db.fetchval("SELECT count(*) FROM newsletters") == 2

            await db.execute("ALTER TABLE newsletters DROP CONSTRAINT no_pills")  # the fix
            done = livefeed(settings, "dead", "retry", letter["id"])
            assert done.returncode == 0, done.stdout + done.stderr

            async def persisted() -> bool:
                return int(await db.fetchval("SELECT count(*) FROM newsletters")) == 3

            await eventually(persisted, what="the retried event in PostgreSQL",
                             procs=(consumer,), timeout=60, interval=0.1)
            assert await db.fetchval("SELECT subject FROM newsletters WHERE id = $1",
                                     events[1].id) == "Poison pill"
            assert as_json(settings, "dead", "list")["total"] == 0
            assert consumer.terminate() == 0
    finally:
        await db.close()


def test_a_worker_stopped_before_its_server_started_counts_as_a_clean_stop() -> None:
    import signal

    from livefeed.ops.workers import exit_status

    assert exit_status(-signal.SIGTERM) == 0  # SIGTERM before uvicorn's handlers: nothing served
    assert exit_status(0) == 0 and exit_status(None) == 0
    assert exit_status(1) == 1 and exit_status(-signal.SIGKILL) == -signal.SIGKILL


HOSTILE_SENDER = "[/oops]"
HOSTILE_SUBJECT = "[bold red]pay[/] \x1b[31mnow\x1b]0;pwned\x07 \u202eevil :smile:"


async def test_operator_output_never_interprets_content(
        redis: Any, keys: Keys, settings_factory: Callable[..., Settings]) -> None:
    """A sender of `[/oops]` made `pending` and `dead list` exit with a rich MarkupError;
    markup, emoji codes and terminal escapes in content reached the terminal."""
    ev = event("alice", HOSTILE_SUBJECT)
    ev = type(ev)(**{**{f: getattr(ev, f) for f in ev.__struct_fields__},
                     "sender": HOSTILE_SENDER})
    await log_of(redis, keys).append([(str(ev.id), ev.user_id, encode_event(ev))])
    await groups(redis, keys)
    await redis.xreadgroup(PERSIST_GROUP, "c1", {keys.ingest_of("alice"): ">"}, count=1)
    await poisoned(redis, keys, HOSTILE_SUBJECT)
    settings = settings_factory()
    for args in (("pending",), ("dead", "list")):
        done = livefeed(settings, *args)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr and "MarkupError" not in done.stderr
        assert not any(c in done.stdout for c in "\x1b\x07\u202e"), done.stdout
        flat = "".join(line.strip("│ ") for line in done.stdout.splitlines())
        assert "[bold red]pay[/]" in flat and "\\x1b[31mnow" in flat, done.stdout
    pending = livefeed(settings, "pending")
    assert HOSTILE_SENDER in pending.stdout
    dead_ref = as_json(settings, "dead", "list")["letters"][0]["id"]
    letter = livefeed(settings, "dead", "show", dead_ref)
    assert letter.returncode == 0 and "\x1b" not in letter.stdout
    flat = "".join(line.strip("│ ") for line in letter.stdout.splitlines())
    assert "[bold red]pay[/]" in flat and ":smile:" in flat and "\u202e" not in flat

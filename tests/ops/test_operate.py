"""`livefeed status|pending|claim|dead` as an operator runs them: real processes, real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from core.settings import Settings
from tests.conftest import settings_env
from tests.core.test_deadletters import poisoned
from tests.core.test_inspect import groups, ingest, make_stale


def livefeed(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True,
                          text=True, env={**clean, **settings_env(settings), "COLUMNS": "160"},
                          timeout=60)


def as_json(settings: Settings, *args: str) -> Any:
    done = livefeed(settings, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def crashed_consumer(redis: Any, keys: Keys) -> list[str]:
    """Six events; `persist-dead` took three and died a while ago, `persist-live` took one."""
    ids = await ingest(redis, keys, 6)
    await groups(redis, keys)
    await redis.xreadgroup(PERSIST_GROUP, "persist-dead", {keys.ingest: ">"}, count=3)
    await make_stale(redis, keys, PERSIST_GROUP, "persist-dead", 300_000)
    await redis.xreadgroup(PERSIST_GROUP, "persist-live", {keys.ingest: ">"}, count=1)
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
    assert by_group[PERSIST_GROUP]["oldest_pending_id"] == ids[0]

    stale = as_json(settings, "pending", "--group", PERSIST_GROUP, "--min-idle", "30s")
    assert [(e["id"], e["consumer"], e["deliveries"]) for e in stale["entries"]] == [
        (i, "persist-dead", 1) for i in ids[:3]]
    assert stale["entries"][0]["preview"] == "news@example.com: Issue 0"

    dry = as_json(settings, "claim", "--group", PERSIST_GROUP, "--min-idle", "60s", "--dry-run")
    assert dry["to"] == "persist-live" and len(dry["entries"]) == 3
    moved = as_json(settings, "claim", "--group", PERSIST_GROUP, "--min-idle", "1m",
                    "--to", "persist-2")
    assert [(e["id"], e["consumer"]) for e in moved["entries"]] == [
        (i, "persist-dead") for i in ids[:3]]
    after = as_json(settings, "pending", "--consumer", "persist-2")
    assert [(e["id"], e["deliveries"]) for e in after["entries"]] == [(i, 2) for i in ids[:3]]

    table = livefeed(settings, "status")
    assert table.returncode == 0, table.stderr
    for text in ("Consumer groups", PERSIST_GROUP, FANOUT_GROUP, "persist-live", "persist-2",
                 keys.ingest):
        assert text in table.stdout
    rows = livefeed(settings, "pending", "--limit", "2")
    assert rows.returncode == 0 and ids[0] in rows.stdout and "more match" in rows.stdout


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
    assert livefeed(settings, "dead", "show", "1-1").returncode == 1

    retried = as_json(settings, "dead", "retry", first)
    assert [(a["id"], a["outcome"]) for a in retried] == [(first, "retried")]
    [(_, fields)] = await redis.xrange(keys.ingest)
    assert fields[b"event_id"] == event_id.encode() and fields[b"data"] == data

    refused = livefeed(settings, "dead", "drop", second)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert await redis.xlen(keys.dead) == 1
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
    assert await redis.xlen(keys.dead) == 0 and await redis.xlen(keys.ingest) == 3

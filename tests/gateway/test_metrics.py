"""`/metrics`: Prometheus text with the stream figures read from Redis at scrape time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from livefeed.core import auth
from livefeed.core.keys import FANOUT_GROUP, PERSIST_GROUP, Keys
from livefeed.core.settings import Settings
from livefeed.gateway import metrics as gw_metrics
from tests.helpers.admin import app_client
from tests.helpers.streams import groups, ingest

SCRAPE_TOKEN = "prometheus-scrape-token"
SCRAPE = {"authorization": f"Bearer {SCRAPE_TOKEN}"}


def by_partition(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
                 group: str) -> dict[str, float]:
    """{partition: value} of a per-partition gauge's series of `group`."""
    return {dict(labels)["partition"]: value for (metric, labels), value in got.items()
            if metric == name and dict(labels)["group"] == group}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_scrape_reports_streams_lag_and_pending(
        settings_factory: Callable[..., Settings], redis: Any, keys: Keys) -> None:
    await ingest(redis, keys, 7)
    await groups(redis, keys)
    await redis.xreadgroup(PERSIST_GROUP, "p1", {keys.ingest_of("alice"): ">"}, count=3)
    async with app_client(settings_factory(metrics_token=SCRAPE_TOKEN)) as (client, app):
        r = await client.get("/metrics", headers=SCRAPE)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        got = samples(r.text)
        assert got[("livefeed_stream_length", (("stream", "ingest"),))] == 7
        assert got[("livefeed_stream_length", (("stream", "dead"),))] == 0
        assert got[("livefeed_group_lag", (("group", PERSIST_GROUP),))] == 4
        assert got[("livefeed_group_lag", (("group", FANOUT_GROUP),))] == 7
        assert got[("livefeed_group_pending", (("group", PERSIST_GROUP),))] == 3
        assert got[("livefeed_group_consumers", (("group", PERSIST_GROUP),))] == 1
        # Per partition: all of it in alice's, a zero series for every other partition.
        mine = keys.partition_of("alice")

        def only_mine(value: int) -> dict[str, float]:
            return {str(p): value if p == mine else 0 for p in range(keys.count)}

        assert by_partition(got, "livefeed_partition_lag", PERSIST_GROUP) == only_mine(4)
        assert by_partition(got, "livefeed_partition_lag", FANOUT_GROUP) == only_mine(7)
        assert by_partition(got, "livefeed_partition_pending", PERSIST_GROUP) == only_mine(3)
        assert by_partition(got, "livefeed_partition_pending", FANOUT_GROUP) == only_mine(0)
        # The process metrics every role counts are in the same exposition.
        for name in ("livefeed_ingest_events_total", "livefeed_batch_size",
                     "livefeed_delivery_seconds", "livefeed_frames_sent_total"):
            assert f"# TYPE {name.removesuffix('_total')}" in r.text

        # Within the cache interval a scrape does not go back to Redis...
        figures = app.state.lf.stream_figures
        assert isinstance(figures, gw_metrics.StreamFigures)
        figures.cache_s = 3600
        await redis.xack(keys.ingest_of("alice"), PERSIST_GROUP,
                         *[row["message_id"] for row in await redis.xpending_range(
                             keys.ingest_of("alice"), PERSIST_GROUP, min="-", max="+", count=10)])
        cached = samples((await client.get("/metrics", headers=SCRAPE)).text)
        assert cached[("livefeed_group_pending", (("group", PERSIST_GROUP),))] == 3
        # ...and after it, it does.
        figures.cache_s = 0
        fresh = samples((await client.get("/metrics", headers=SCRAPE)).text)
        assert fresh[("livefeed_group_pending", (("group", PERSIST_GROUP),))] == 0


@pytest.mark.parametrize(("configured", "bearer", "status"), [
    (SCRAPE_TOKEN, None, 401),
    (SCRAPE_TOKEN, "wrong-token", 401),
    (SCRAPE_TOKEN, SCRAPE_TOKEN, 200),
    (SCRAPE_TOKEN, "admin", 200),
    (None, SCRAPE_TOKEN, 401),  # no metrics token configured: admin tokens only
    (None, "admin", 200),
    (None, "user", 403),
])
async def test_metrics_are_not_public(settings_factory: Callable[..., Settings],
                                      configured: str | None, bearer: str | None,
                                      status: int) -> None:
    settings = settings_factory(metrics_token=configured)
    assert settings.secret is not None
    value = {"admin": auth.mint(settings.secret, "ops", admin=True),
             "user": auth.mint(settings.secret, "alice")}.get(bearer or "", bearer)
    headers = {"authorization": f"Bearer {value}"} if value else {}
    async with app_client(settings) as (client, _):
        r = await client.get("/metrics", headers=headers)
        assert r.status_code == status
        assert ("livefeed_clients" in r.text) is (status == 200)
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"
        # A token in the URL is no way in.
        assert (await client.get(f"/metrics?token={SCRAPE_TOKEN}")).status_code == 401


def test_a_tally_counter_is_exposed_as_a_prometheus_counter() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from livefeed.core.metrics import TallyCounter

    registry = CollectorRegistry()
    counter = TallyCounter("t_frames", "Frames", "type", registry=registry)
    assert "t_frames_total{" not in generate_latest(registry).decode()  # none counted
    counter.labels("event").inc()
    counter.labels("event").value += 2  # how the hot path counts
    counter.labels("hello").inc()
    text = generate_latest(registry).decode()
    assert "# TYPE t_frames_total counter" in text  # as prometheus-client's own Counter
    assert 't_frames_total{type="event"} 3.0' in text
    assert 't_frames_total{type="hello"} 1.0' in text

"""Prometheus metrics of every livefeed process (prometheus-client's default registry).

Defined once here so ingest, consumers and gateways count under the same names; each
process exposes its own (`/metrics` on gateways, `--metrics-port` on consumers).
Stream lengths, lag and pending are read from Redis when scraped (see the admin views).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

INGEST_EVENTS = Counter(
    "livefeed_ingest_events", "Events received by POST /v1/events, by outcome",
    ["outcome"],  # accepted | duplicate | rejected
)
INGEST_REQUESTS = Counter(
    "livefeed_ingest_requests", "Ingest requests by HTTP status", ["status"]
)

BATCH_SIZE = Histogram(
    "livefeed_batch_size", "Entries handled per consumer batch", ["group"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
BATCH_SECONDS = Histogram(
    "livefeed_batch_seconds", "Time to do one batch's work (e.g. the Postgres write)", ["group"],
)
ENTRIES_ACKED = Counter("livefeed_entries_acked", "Entries acked after their work", ["group"])
ENTRIES_DEAD = Counter("livefeed_dead_letters", "Entries moved to the dead-letter stream",
                       ["group"])
ENTRIES_VANISHED = Counter(
    "livefeed_entries_vanished", "Pending entries whose payload was trimmed or deleted (acked)",
    ["group"],
)
ENTRIES_CLAIMED = Counter("livefeed_entries_claimed", "Stale entries claimed from other consumers",
                          ["group"])
PARTITIONS_OWNED = Gauge("livefeed_partitions_owned",
                         "Partitions whose lease this consumer holds", ["group"])
TRANSIENT_FAILURES = Counter(
    "livefeed_transient_failures", "Batches retried after a transient failure (e.g. DB down)",
    ["group"],
)

CLIENTS = Gauge("livefeed_clients", "Connected clients on this gateway", ["transport"])


class Tally:
    """One labelled count of a `TallyCounter`: a plain `+=`. A prometheus-client child
    takes a lock per `inc`, which was a fifth of the Python a live frame costs per session.
    Counted from one thread only (the gateway's event loop)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class TallyCounter(Collector):
    """A counter with one label, counted per frame on the hot path, read when scraped."""

    def __init__(self, name: str, documentation: str, label: str,
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._children: dict[str, Tally] = {}
        registry.register(self)

    def labels(self, value: str) -> Tally:
        return self._children.setdefault(value, Tally())

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=[self.label])

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, child in self._children.items():
            family.add_metric([value], child.value)
        yield family


FRAMES_SENT = TallyCounter("livefeed_frames_sent", "Frames sent to clients", "type")
REPLAYS = Counter("livefeed_replays", "Reconnects that replayed missed events")
REPLAYED_EVENTS = Counter("livefeed_replayed_events", "Events sent during replays")
RESETS = Counter("livefeed_resets", "Reset frames sent (history not replayable)", ["reason"])
SLOW_CLOSES = Counter("livefeed_slow_client_closes", "Clients closed with 4008 (too slow)")
CONNECTIONS_REFUSED = Counter(
    "livefeed_connections_refused", "Live connections refused by a limit or for their Origin",
    ["reason"],  # rate | gateway_limit | user_limit | origin
)
REQUEST_TIMEOUTS = Counter(
    "livefeed_request_timeouts", "Connections closed for unfinished request headers or body",
    ["phase"],  # headers | body
)
WS_INBOUND_CLOSES = Counter(
    "livefeed_ws_inbound_closes", "WebSockets closed for what the client sent",
    ["code"],  # 1009 (message too big) | 1008 (inbound rate)
)
PUBSUB_RECONNECTS = Counter("livefeed_pubsub_reconnects", "Pub/sub listener reconnects")
DELIVERY_SECONDS = Histogram(
    "livefeed_delivery_seconds",
    "Ingest-to-gateway-send latency of live events (from the stream id's timestamp)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# Set when a gateway's /metrics is scraped, to see leaks (each returns to its baseline once
# the connections that raised it are gone).
GATEWAY_TASKS = Gauge("livefeed_gateway_tasks", "asyncio tasks in this gateway process")
GATEWAY_SESSIONS = Gauge("livefeed_gateway_sessions", "Live sessions (WebSocket and SSE) "
                         "registered for the drain")
HUB_CHANNELS = Gauge("livefeed_hub_channels", "User channels the pub/sub hub is subscribed to")
HUB_LISTENERS = Gauge("livefeed_hub_listeners", "Sessions listening to the hub's channels")

# Read from Redis when a gateway's /metrics is scraped (cached briefly: gateway/metrics.py).
STREAM_LENGTH = Gauge("livefeed_stream_length", "Entries in a stream", ["stream"])
GROUP_LAG = Gauge("livefeed_group_lag", "Entries not yet delivered to the group", ["group"])
GROUP_PENDING = Gauge("livefeed_group_pending", "Entries delivered, not acked", ["group"])
PARTITION_LAG = Gauge("livefeed_partition_lag", "Entries of a partition not yet delivered "
                      "to the group", ["group", "partition"])
PARTITION_PENDING = Gauge("livefeed_partition_pending", "Entries of a partition delivered, "
                          "not acked", ["group", "partition"])
GROUP_CONSUMERS = Gauge("livefeed_group_consumers", "Consumers known to the group", ["group"])
GROUP_OLDEST_PENDING = Gauge(
    "livefeed_group_oldest_pending_seconds", "Age of the group's oldest pending entry", ["group"],
)
SCRAPE_REDIS_ERRORS = Counter(
    "livefeed_scrape_redis_errors", "Scrapes whose stream figures could not be read from Redis",
)

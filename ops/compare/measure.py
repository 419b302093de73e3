"""Counting by matching ids: what each client should have seen against what it saw.

Pure functions of the records (no I/O), so the arithmetic is tested on hand-made logs.

Definitions (per client, then summed over clients):
- expected: events accepted (`202`) for the client's user during the cell;
- delivered: distinct expected ids the client received in `event` frames;
- lost: expected ids never received; duplicated: event frames beyond the first per id;
- out of order: first deliveries whose send sequence is below one delivered before them;
- unexpected: frames whose id was not accepted for this user (another user's, or refused);
- away: accepted ids posted and answered entirely inside a window the harness kept the
  client disconnected (the load pauses at each edge, so no event straddles one);
- latency: receive time minus post time of the first delivery, leaving out events posted
  while the client was kept away (their delay is the harness's window, not the system's);
- consistent at: when the last missing expected id arrived; None while any is missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from livefeed.ops.compare.records import Away, ClientLog, Mark, Sent
from livefeed.ops.stats import percentile
from livefeed.schemas.frames import CloseCode


class ClientStats(msgspec.Struct):
    name: str
    user: str
    expected: int
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int
    away_published: int
    lost_while_away: int
    connections: int
    closed_4008: int
    resets: int
    consistent_at: float | None


class ClientCount(msgspec.Struct):
    """ClientStats plus the id sets behind it (kept in memory, not in the JSON)."""

    stats: ClientStats
    lost_ids: frozenset[str]
    away_ids: frozenset[str]
    latencies: list[float]


class RowCount(msgspec.Struct):
    rows: int
    missing: int
    duplicate: int
    unexpected: int


def accepted_by_user(sent: Iterable[Sent]) -> dict[str, list[Sent]]:
    by_user: dict[str, list[Sent]] = {}
    for s in sent:
        if s.accepted:
            by_user.setdefault(s.user, []).append(s)
    return by_user


def posted_while_away(events: Iterable[Sent], away: Sequence[Away]) -> set[str]:
    """Ids whose whole request (post to answer) fell inside one of the `away` windows."""
    ids: set[str] = set()
    for s in events:
        if s.t_done is None:
            continue
        if any(w.down <= s.t_post and s.t_done <= w.up for w in away):
            ids.add(s.event_id)
    return ids


def _sent_during(s: Sent, away: Sequence[Away]) -> bool:
    return any(w.down <= s.t_post <= w.up for w in away)


def count_client(log: ClientLog, expected: Sequence[Sent]) -> ClientCount:
    """Count one client's frames against the accepted events of its user."""
    by_id = {s.event_id: s for s in expected}
    frames = Counter(r.event_id for r in log.received)
    first: dict[str, float] = {}
    out_of_order = 0
    highest = -1
    latencies: list[float] = []
    for r in log.received:
        if r.event_id in first:
            continue
        first[r.event_id] = r.t
        s = by_id.get(r.event_id)
        if s is None:
            continue
        if s.seq < highest:
            out_of_order += 1
        highest = max(highest, s.seq)
        if not _sent_during(s, log.away):
            latencies.append(r.t - s.t_post)
    delivered = by_id.keys() & first.keys()
    lost_ids = frozenset(by_id.keys() - delivered)
    away_ids = frozenset(posted_while_away(expected, log.away))
    consistent_at = None
    if not lost_ids:
        consistent_at = max((first[i] for i in delivered), default=0.0)
    stats = ClientStats(
        name=log.name,
        user=log.user,
        expected=len(by_id),
        delivered=len(delivered),
        lost=len(lost_ids),
        duplicated=sum(frames.values()) - len(frames),
        out_of_order=out_of_order,
        unexpected=len(first.keys() - by_id.keys()),
        away_published=len(away_ids),
        lost_while_away=len(lost_ids & away_ids),
        connections=len(log.connections),
        closed_4008=sum(1 for c in log.connections if c.close_code == CloseCode.TOO_SLOW),
        resets=sum(1 for c in log.connections if c.reset is not None),
        consistent_at=consistent_at,
    )
    return ClientCount(stats=stats, lost_ids=lost_ids, away_ids=away_ids, latencies=latencies)


def count_clients(logs: Sequence[ClientLog], sent: Sequence[Sent]) -> list[ClientCount]:
    by_user = accepted_by_user(sent)
    return [count_client(log, by_user.get(log.user, [])) for log in logs]


def count_rows(sent: Iterable[Sent], rows: Mapping[str, int]) -> RowCount:
    """`rows`: how many rows Postgres holds per event id (a primary key keeps it at 1)."""
    accepted = {s.event_id for s in sent if s.accepted}
    return RowCount(
        rows=sum(rows.values()),
        missing=len(accepted - rows.keys()),
        duplicate=sum(n - 1 for n in rows.values() if n > 1),
        unexpected=len(rows.keys() - accepted),
    )


def consistent_after(counts: Sequence[ClientCount], sent: Sequence[Sent]) -> float | None:
    """Seconds from the last accepted event's answer until every client had all its events.

    None if any client is still missing one. Never negative: a client that was already
    complete when the last answer came counts as consistent at once.
    """
    if any(c.stats.consistent_at is None for c in counts):
        return None
    last = max((s.t_done for s in sent if s.accepted and s.t_done is not None), default=0.0)
    done = max((c.stats.consistent_at or 0.0 for c in counts), default=0.0)
    return max(0.0, done - last)


class CellResult(msgspec.Struct):
    """Everything measured in one (scenario, mode) cell; what `--json` prints per cell."""

    scenario: str
    mode: str
    seed: int
    duration_s: float
    clients: int
    rate: float
    ingest_replicas: int | None = None  # LIVEFEED_INGEST_REPLICAS if the cell set it
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    expected: int = 0  # deliveries owed: accepted events times the clients of their user
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    away_published: int = 0
    lost_while_away: int = 0
    rows: int = 0
    rows_missing: int = 0
    rows_duplicate: int = 0
    rows_unexpected: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    consistent_after_s: float | None = None
    closed_4008: int = 0
    resets: int = 0
    reconnects: int = 0
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    timeline: list[Mark] = msgspec.field(default_factory=list)
    per_client: list[ClientStats] = msgspec.field(default_factory=list)
    skipped: str | None = None
    failed: str | None = None

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.expected if self.expected else 0.0


def summarize(cell: CellResult, sent: Sequence[Sent], counts: Sequence[ClientCount],
              rows: Mapping[str, int]) -> CellResult:
    """Fill `cell`'s counts from the records; returns it."""
    cell.sent = len(sent)
    cell.accepted = sum(1 for s in sent if s.accepted)
    cell.rejected = cell.sent - cell.accepted
    stats = [c.stats for c in counts]
    cell.per_client = stats
    cell.expected = sum(s.expected for s in stats)
    cell.delivered = sum(s.delivered for s in stats)
    cell.lost = sum(s.lost for s in stats)
    cell.duplicated = sum(s.duplicated for s in stats)
    cell.out_of_order = sum(s.out_of_order for s in stats)
    cell.unexpected = sum(s.unexpected for s in stats)
    cell.away_published = sum(s.away_published for s in stats)
    cell.lost_while_away = sum(s.lost_while_away for s in stats)
    cell.closed_4008 = sum(s.closed_4008 for s in stats)
    cell.resets = sum(s.resets for s in stats)
    cell.reconnects = sum(max(0, s.connections - 1) for s in stats)
    latencies = [x for c in counts for x in c.latencies]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    cell.latency_p50_ms = None if p50 is None else round(p50 * 1000, 2)
    cell.latency_p99_ms = None if p99 is None else round(p99 * 1000, 2)
    after = consistent_after(counts, sent)
    cell.consistent_after_s = None if after is None else round(after, 3)
    r = count_rows(sent, rows)
    cell.rows, cell.rows_missing = r.rows, r.missing
    cell.rows_duplicate, cell.rows_unexpected = r.duplicate, r.unexpected
    return cell

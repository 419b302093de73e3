"""Showing the results: a rich table (and live progress) in the terminal, and a standalone
HTML report with inline SVG charts (no script, nothing fetched from the network).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from livefeed.ops.compare.measure import CellResult

COLORS = {"streams": "#1f77b4", "pubsub": "#e4572e", "list": "#8e44ad"}
ProgressFn = Callable[[float, str], None]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def label(cell: CellResult) -> str:
    """The mode, and the replica acknowledgement if the cell set one (`streams
    replicas=1`): the variants of one scenario stay apart in the table and the charts."""
    if cell.ingest_replicas is None:
        return cell.mode
    return f"{cell.mode} replicas={cell.ingest_replicas}"


def _color(mode_label: str) -> str:
    return COLORS.get(mode_label.split()[0], "#777")


def consistency(cell: CellResult) -> str:
    if cell.skipped or cell.failed:
        return "-"
    return "never" if cell.consistent_after_s is None else f"{cell.consistent_after_s:.2f}s"


def note(cell: CellResult) -> str:
    if cell.skipped:
        return f"skipped: {cell.skipped}"
    if cell.failed:
        return f"failed: {cell.failed}"
    parts = []
    if cell.rejected:
        parts.append(f"{cell.rejected} not accepted")
    if cell.away_published:
        parts.append(f"{cell.away_published} posted while away, {cell.lost_while_away} lost")
    if cell.reconnects:
        parts.append(f"{cell.reconnects} reconnects")
    if cell.closed_4008:
        parts.append(f"{cell.closed_4008}x 4008")
    if cell.resets:
        parts.append(f"{cell.resets} resets")
    for error, n in sorted(cell.errors.items()):
        parts.append(f"{n}x {error}" + (" (requests refused)" if error == "HTTP 503" else ""))
    if cell.unexpected:
        parts.append(f"{cell.unexpected} unexpected")
    if cell.rows_unexpected:
        parts.append(f"{cell.rows_unexpected} rows of refused events")
    return ", ".join(parts)


def table(cells: Sequence[CellResult]) -> Table:
    t = Table(title="livefeed compare: delivery guarantees under faults", title_justify="left")
    for col, justify in (("scenario", "left"), ("mode", "left"), ("accepted", "right"),
                         ("delivered/owed", "right"), ("lost", "right"), ("dup", "right"),
                         ("order", "right"), ("rows miss/dup", "right"), ("p50 ms", "right"),
                         ("p99 ms", "right"), ("consistent", "right"), ("notes", "left")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in cells:
        done = not (c.skipped or c.failed)
        lost_style = "bold red" if c.lost else "green"
        t.add_row(
            c.scenario, label(c),
            f"{c.accepted}/{c.sent}" if done else "-",
            f"{c.delivered}/{c.expected}" if done else "-",
            f"[{lost_style}]{c.lost}[/]" if done else "-",
            f"[{'bold red' if c.duplicated else 'green'}]{c.duplicated}[/]" if done else "-",
            str(c.out_of_order) if done else "-",
            f"{c.rows_missing}/{c.rows_duplicate}" if done else "-",
            _ms(c.latency_p50_ms), _ms(c.latency_p99_ms), consistency(c), note(c),
        )
    return t


class LiveProgress:
    """One progress bar per cell on stderr; `cell()` hands the runner its callback."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("{task.description:<28}"), BarColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self._task: TaskID | None = None

    def cell(self, scenario: str, mode: str) -> ProgressFn:
        if self._task is not None:
            self.progress.update(self._task, completed=100, status="done")
        task = self.progress.add_task(f"{scenario} / {mode}", total=100, status="")
        self._task = task

        def update(fraction: float, status: str) -> None:
            self.progress.update(task, completed=100 * fraction, status=status)

        return update

    @contextmanager
    def running(self) -> Iterator[LiveProgress]:
        with self.progress:
            yield self
            if self._task is not None:
                self.progress.update(self._task, completed=100, status="done")


# -- HTML ------------------------------------------------------------------------------

def _bar_chart(title: str, scenarios: Sequence[str], modes: Sequence[str],
               value: Callable[[CellResult], float | None], label: Callable[[CellResult], str],
               cells: Sequence[CellResult], *, log: bool = False, unit: str = "",
               min_top: float = 0.0, none_is_worst: bool = False) -> str:
    """Horizontal grouped bars: one group per scenario, one bar per mode.

    `min_top` keeps tiny values from filling the axis; with `none_is_worst` a None value of
    a cell that ran (never consistent) is drawn as a full, faded bar.
    """
    by_key = {(c.scenario, label(c)): c for c in cells}
    values = [v for c in cells if not (c.skipped or c.failed) and (v := value(c)) is not None]
    top = max([*values, min_top])
    bar_h, gap, left, width, right = 14, 10, 118, 250, 150
    height = 40 + len(scenarios) * (len(modes) * bar_h + gap) + 30

    def scale(v: float) -> float:
        if top <= 0:
            return 0.0
        if log:
            floor = 1.0
            return width * math.log10(max(v, floor)) / math.log10(max(top, floor * 10))
        return width * v / top

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + right}" '
           f'height="{height}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="0" y="18" class="t">{html.escape(title)}</text>']
    y = 40
    for s in scenarios:
        out.append(f'<text x="{left - 8}" y="{y + bar_h * len(modes) / 2 + 4}" '
                   f'text-anchor="end" class="l">{html.escape(s)}</text>')
        for m in modes:
            c = by_key.get((s, m))
            done = c is not None and not (c.skipped or c.failed)
            v = value(c) if c is not None and done else None
            w = scale(v) if v is not None else 0.0
            faded = ""
            if v is None and done and none_is_worst:
                w, faded = float(width), ' fill-opacity="0.3"'
            if c is None:
                text = "not run"
            elif done:
                text = label(c)
            else:
                text = "skipped" if c.skipped else "failed"
            out.append(f'<rect x="{left}" y="{y}" width="{max(w, 1.5):.1f}" '
                       f'height="{bar_h - 3}" fill="{_color(m)}"{faded}>'
                       f'<title>{html.escape(f"{s} / {m}: {text}")}</title></rect>')
            out.append(f'<text x="{left + max(w, 1.5) + 5:.1f}" y="{y + bar_h - 5}" '
                       f'class="v">{html.escape(text)}</text>')
            y += bar_h
        y += gap
    axis = f"log scale, {unit}" if log else unit
    out.append(f'<line x1="{left}" y1="34" x2="{left}" y2="{y - gap + 2}" stroke="#999"/>')
    legend_x = left
    for m in modes:
        out.append(f'<rect x="{legend_x}" y="{y + 4}" width="12" height="12" '
                   f'fill="{_color(m)}"/><text x="{legend_x + 16}" y="{y + 14}" '
                   f'class="l">{html.escape(m)}</text>')
        legend_x += 90
    if axis:
        out.append(f'<text x="{left + width}" y="{y + 14}" text-anchor="end" '
                   f'class="v">{html.escape(axis)}</text>')
    out.append("</svg>")
    return "".join(out)


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px}
.charts{display:flex;flex-wrap:wrap;gap:18px}
svg .t{font-weight:600;font-size:14px} svg .l{font-size:12px} svg .v{font-size:11px;fill:#444}
table{border-collapse:collapse;font-size:12.5px;margin-top:8px}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
th:nth-child(-n+2),td:nth-child(-n+2),th:last-child,td:last-child{text-align:left}
td:nth-child(-n+2){white-space:nowrap}
.bad{color:#c0392b;font-weight:600} .ok{color:#1e8449}
.muted{color:#666;font-size:12.5px} code{background:#f3f3f3;padding:0 3px}
"""

_HOW_TO_READ = """
<p>Every number is counted by matching event ids, not estimated. <b>owed</b> is, per client,
the events accepted (<code>202</code>) for its user, summed over clients; <b>delivered</b> the
distinct ones it received; <b>lost</b> owed minus delivered; <b>dup</b> event frames beyond the
first per id; <b>order</b> first deliveries that came after a later-sent event;
<b>rows miss/dup</b> accepted events without a row in PostgreSQL, and extra rows; latency is
receive time minus post time (events posted while the harness kept a client away are left
out); <b>consistent</b> is how long after the last accepted event every client had all of its
events, <i>never</i> when some are still missing.</p>
<p>In <code>streams</code> mode lost, dup and rows missing must be 0 in every scenario: a
reconnecting client resumes from its last id. In <code>pubsub</code> mode a client that is away,
slow, or behind a dropped pub/sub link misses what was published meanwhile, and nothing
brings it back.</p>
<p><code>list</code> is the article's design: ingest publishes each event and pushes it onto
one Redis List; every 500 ms a writer empties it, up to 100 items per <code>LMPOP</code>, each
batch in one <code>INSERT</code>. Live delivery is plain pub/sub (what <code>pubsub</code>
misses, it misses too), and <code>LMPOP</code> removes a batch before the <code>INSERT</code>
commits: in <code>consumer-crash</code> the harness kills the writer <b>on purpose</b> between
the two (a hold file makes it wait there after a pop; a kill timed by chance would rarely hit
that window of a few milliseconds every 500 ms), and that batch shows as rows missing; in
<code>db-outage</code> every batch popped while the database is away fails its
<code>INSERT</code> and is lost.</p>
<p>One exception: <code>shard-failover</code> with <code>replicas=0</code>
(<code>LIVEFEED_INGEST_REPLICAS=0</code>) may lose what the killed primary had acknowledged
and not yet replicated; that is the setting's documented cost, counted here. With
<code>replicas=1</code> nothing acknowledged may be lost: the shard refuses appends
(<code>503</code>) until it has a replica again.</p>
"""


def html_report(cells: Sequence[CellResult], params: dict[str, object],
                descriptions: dict[str, str]) -> str:
    scenarios = list(dict.fromkeys(c.scenario for c in cells))
    modes = list(dict.fromkeys(label(c) for c in cells))
    charts = [
        _bar_chart("Events lost (% of deliveries owed)", scenarios, modes,
                   lambda c: c.loss_pct, lambda c: f"{c.lost} ({c.loss_pct:.1f}%)", cells,
                   unit="%"),
        _bar_chart("Events refused by ingest (% of sent)", scenarios, modes,
                   lambda c: 100.0 * c.rejected / c.sent if c.sent else 0.0,
                   lambda c: f"{c.rejected} ({100.0 * c.rejected / max(c.sent, 1):.1f}%)",
                   cells, unit="%"),
        _bar_chart("Duplicates shown to clients", scenarios, modes,
                   lambda c: float(c.duplicated), lambda c: str(c.duplicated), cells),
        _bar_chart("End-to-end latency p50 (ms)", scenarios, modes,
                   lambda c: c.latency_p50_ms, lambda c: f"{_ms(c.latency_p50_ms)} ms", cells,
                   log=True, unit="ms"),
        _bar_chart("End-to-end latency p99 (ms)", scenarios, modes,
                   lambda c: c.latency_p99_ms, lambda c: f"{_ms(c.latency_p99_ms)} ms", cells,
                   log=True, unit="ms"),
        _bar_chart("Rows missing in PostgreSQL", scenarios, modes,
                   lambda c: float(c.rows_missing), lambda c: str(c.rows_missing), cells),
        _bar_chart("Time until all clients consistent (s)", scenarios, modes,
                   lambda c: c.consistent_after_s, lambda c: consistency(c), cells, unit="s",
                   min_top=1.0, none_is_worst=True),
    ]
    rows = []
    for c in cells:
        done = not (c.skipped or c.failed)

        def cls(bad: bool) -> str:
            return "bad" if bad else "ok"

        rows.append(
            "<tr>" + "".join([
                f"<td>{html.escape(c.scenario)}</td><td>{html.escape(label(c))}</td>",
                f"<td>{c.accepted}/{c.sent}</td><td>{c.delivered}/{c.expected}</td>",
                f'<td class="{cls(c.lost > 0)}">{c.lost}</td>',
                f'<td class="{cls(c.duplicated > 0)}">{c.duplicated}</td>',
                f"<td>{c.out_of_order}</td>",
                f'<td class="{cls(c.rows_missing + c.rows_duplicate > 0)}">'
                f"{c.rows_missing}/{c.rows_duplicate}</td>",
                f"<td>{_ms(c.latency_p50_ms)}</td><td>{_ms(c.latency_p99_ms)}</td>",
                f"<td>{consistency(c)}</td>",
                f"<td>{html.escape(note(c))}</td>",
            ] if done else [
                f"<td>{html.escape(c.scenario)}</td><td>{html.escape(label(c))}</td>",
                '<td colspan="9">-</td>', f"<td>{html.escape(note(c))}</td>",
            ]) + "</tr>")
    timelines = []
    for c in cells:
        if c.timeline:
            steps = "; ".join(f"{m.t:.1f}s {html.escape(m.what)}" for m in c.timeline)
            timelines.append(f"<li><b>{html.escape(c.scenario)} / {html.escape(label(c))}</b>: "
                             f"{steps}</li>")
    scen = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(d)}</li>"
                   for n, d in descriptions.items() if n in scenarios)
    shown = ", ".join(f"{k} {v}" for k, v in params.items())
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = ("<tr><th>scenario</th><th>mode</th><th>accepted</th><th>delivered/owed</th>"
              "<th>lost</th><th>dup</th><th>order</th><th>rows miss/dup</th><th>p50 ms</th>"
              "<th>p99 ms</th><th>consistent</th><th>notes</th></tr>")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>livefeed compare</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>livefeed compare: Redis Streams versus Pub/Sub only</h1>"
        f'<p class="muted">{html.escape(when)} on {html.escape(platform.node())} '
        f"({html.escape(platform.machine())}, Python {platform.python_version()}); "
        f"{html.escape(shown)}</p>"
        f'<div class="charts">{"".join(charts)}</div>'
        f"<h2>All numbers</h2><table>{header}{''.join(rows)}</table>"
        f"<h2>How to read it</h2>{_HOW_TO_READ}"
        f"<h2>Scenarios</h2><ul>{scen}</ul>"
        f'<h2>What happened when</h2><ul class="muted">{"".join(timelines)}</ul>'
        "</body></html>"
    )

"""`replay`: time from reconnect (with a last id) to the `recovered` frame, M missed events.

The baseline is the bare read of the same M feed entries with paged XRANGE from Python:
what any replay has to do at least, without encoding or sending a frame.

Every timed reconnect finds its user's channel unsubscribed (a gateway with
`LIVEFEED_HUB_LINGER=0`), as a client back from a long absence does; one more row times a
reconnect within the linger (the configured one), as after a page load.
"""

from __future__ import annotations

from statistics import median
from typing import Any

import msgspec

from livefeed.core import auth, redis_client
from livefeed.core.eventlog import EventLog
from livefeed.core.keys import Keys
from livefeed.ops.bench import data, loadgen, procs
from livefeed.ops.bench.clients import Spec
from livefeed.ops.bench.runner import BenchResult, Context, Goal, Timer, row

PAGE = 500
# Reconnects per figure, and floor reads before and after them (medians of each).
RUNS = 21


async def _fill(log: EventLog, user: str, count: int) -> str:
    """Fan out an anchor event and then `count` more to `user`; the anchor's feed id."""
    evs = data.triples(data.events(count + 1, [user], seed=count))
    anchor = (await log.fan_out(evs[:1]))[0].feed_id
    for i in range(1, len(evs), 1000):
        await log.fan_out(evs[i : i + 1000])
    return anchor


async def _xrange_floor(redis: Any, key: str, after: str, count: int) -> float:
    got = 0
    with Timer() as t:
        cursor = after
        while got < count:
            rows = await redis.xrange(key, min=f"({cursor}", count=PAGE)
            if not rows:
                break
            got += len(rows)
            cursor = rows[-1][0].decode()
    if got != count:
        raise RuntimeError(f"XRANGE read {got} of {count} entries")
    return t.seconds


async def run(ctx: Context, result: BenchResult) -> None:
    sizes = [1_000] if ctx.quick else [1_000, 10_000]
    runs = ctx.size(1, RUNS)
    async with ctx.namespace(feed_maxlen=max(sizes) * 2) as s:
        assert s.secret
        keys = Keys(s.prefix)
        redis = redis_client.connect(s.redis_url)
        floor_reads: dict[int, list[float]] = {m: [] for m in sizes}

        async def read_floors() -> None:
            for m in sizes:
                floor_reads[m] += [await _xrange_floor(redis, keys.feed(f"replay{m}"),
                                                       anchors[m], m) for _ in range(runs)]

        try:
            log = EventLog(redis, keys, feed_maxlen=s.feed_maxlen, dedupe_ttl_s=s.dedupe_ttl_s)
            anchors = {m: await _fill(log, f"replay{m}", m) for m in sizes}
            newest = await log.last_feed_id(f"replay{sizes[0]}")
            assert newest is not None
            # The floor is read before and after the reconnects: a machine that speeds up
            # or slows down meanwhile moves both sides of the ratio alike.
            await read_floors()
            secret = s.secret

            async def reconnect(port: int, user: str, last_id: str, missed: int,
                                count: int) -> float:
                """Median seconds from connect to `recovered` over `count` reconnects, one
                after the other from one client process, after one more that is not timed:
                a fresh process's first connection costs it ~1.5 ms more (its own code
                paths run cold), which is the client's, not the gateway's."""
                spec = Spec(f"ws://127.0.0.1:{port}/v1/ws",
                            [auth.mint(secret, user)] * (count + 1), last_id=last_id,
                            mode="reconnect")
                async with loadgen.clients([spec]) as gens:
                    outcome = await gens[0].stop()
                if outcome.events != missed * (count + 1) or \
                        len(outcome.recovered_s) != count + 1:
                    raise RuntimeError(f"{count + 1} replays of {missed}: got "
                                       f"{outcome.events} events, recovered frames "
                                       f"{len(outcome.recovered_s)}")
                return median(outcome.recovered_s[1:])

            cold = msgspec.structs.replace(s, hub_linger_s=0.0)
            with procs.gateway(cold, ctx.workdir, "replay-gateway") as (gw, port):
                replays = {}
                for m in sizes:
                    with procs.profiled(gw.pid, ctx.profile_dir, f"replay-{m}"):
                        replays[m] = await reconnect(port, f"replay{m}", anchors[m], m, runs)
                # What every reconnect costs before any replay: connect, auth, hello, a read.
                fixed = await reconnect(port, f"replay{sizes[0]}", newest, 0, runs)
            warm = None
            if s.hub_linger_s > 0:
                with procs.gateway(s, ctx.workdir, "replay-gateway-linger") as (_, port):
                    # Each timed reconnect finds the channel the one before left lingering.
                    warm = await reconnect(port, f"replay{sizes[0]}", newest, 0, runs)
            await read_floors()
        finally:
            await redis.aclose()
    floors = {m: median(floor_reads[m]) for m in sizes}
    for m in sizes:
        result.rows.append(row(f"replay {m:,} missed events", replays[m] * 1000, "ms",
                               f"paged XRANGE ({PAGE}) only", floors[m] * 1000,
                               Goal("ratio", "<=", 2)))
    result.rows.append(row("reconnect with nothing missed", fixed * 1000, "ms",
                           f"paged XRANGE ({PAGE}) of {sizes[0]:,}", floors[sizes[0]] * 1000))
    # The replay itself: what a reconnect with m missed costs beyond one with none, against
    # the floor, which has no connection to open either.
    for m in sizes:
        result.rows.append(row(f"replay {m:,} beyond the reconnect",
                               max(0.0, replays[m] - fixed) * 1000, "ms",
                               f"paged XRANGE ({PAGE}) only", floors[m] * 1000))
    if warm is not None:
        result.rows.append(row("reconnect with nothing missed, its channel lingering",
                               warm * 1000, "ms", "the same, channel unsubscribed",
                               fixed * 1000))
    else:
        ctx.note("LIVEFEED_HUB_LINGER=0: no row for a reconnect within the linger")
    ctx.note(f"time from the WebSocket connect (with last_id) to the `recovered` frame, "
             f"from a separate client process, one reconnect after the other (its first, "
             f"untimed, warms it up); includes connect, auth and hello; medians of "
             f"{runs} reconnects, and of {2 * runs} floor reads ({runs} before the "
             f"reconnects, {runs} after)")

"""`ingest`: events/s accepted by POST /v1/events vs raw pipelined XADD (the ceiling)."""

from __future__ import annotations

from typing import Any

import msgspec

from livefeed.core import auth, redis_client
from livefeed.core.keys import Keys
from livefeed.ops.bench import data, httpload, procs
from livefeed.ops.bench.runner import BenchResult, Context, Goal, Timer, row
from livefeed.schemas.stream import IngestEntry

CONCURRENCY = 8


def _requests(secret: str, bodies: list[bytes]) -> list[bytes]:
    return [
        # Signed when built: a run is far shorter than the signature tolerance (5 min).
        httpload.post_request("/v1/events", body, auth.signature_headers(secret, body))
        for body in bodies
    ]


async def _xadd_ceiling(redis: Any, stream: str, triples: list[IngestEntry],
                        batch: int) -> float:
    with Timer() as t:
        for start in range(0, len(triples), batch):
            pipe = redis.pipeline(transaction=False)
            for entry in triples[start : start + batch]:
                pipe.xadd(stream, entry.fields())
            await pipe.execute()
    return len(triples) / t.seconds


async def run(ctx: Context, result: BenchResult) -> None:
    n_single = ctx.size(1_000, 10_000)
    n_batched = ctx.size(5_000, 50_000)
    async with ctx.namespace() as s:
        assert s.webhook_secret
        users = [f"user{i}" for i in range(100)]
        singles = data.events(n_single, users, seed=1)
        batched = data.events(n_batched, users, seed=2)
        single_reqs = _requests(s.webhook_secret, [msgspec.json.encode(e) for e in singles])
        batch_reqs = _requests(s.webhook_secret, [
            msgspec.json.encode(batched[i : i + 100]) for i in range(0, n_batched, 100)])

        redis = redis_client.connect(s.redis_url)
        try:
            ceiling = await _xadd_ceiling(redis, Keys(s.prefix).ingest(0) + ":ceiling",
                                          data.triples(batched), 100)
            ceiling_single = await _xadd_ceiling(redis, Keys(s.prefix).ingest(0) + ":ceiling1",
                                                 data.triples(singles), 1)
        finally:
            await redis.aclose()

        with procs.gateway(s, ctx.workdir, "ingest-gateway") as (gw, port):
            status, body = await httpload.send_one(port, single_reqs[0])
            if status != 202:
                raise RuntimeError(f"POST /v1/events answered {status} {body[:200]!r}; is "
                                   "ingest (gateway/ingest.py) in gateway.app DEFAULT_FEATURES?")
            # warm up: imports, pools, script load
            await httpload.send_all(port, single_reqs[:50], 2)
            with procs.profiled(gw.pid, ctx.profile_dir, "ingest-gateway-single"), \
                    Timer() as t1:
                st1 = await httpload.send_all(port, single_reqs[50:], CONCURRENCY)
            with procs.profiled(gw.pid, ctx.profile_dir, "ingest-gateway-batch100"), \
                    Timer() as t2:
                st2 = await httpload.send_all(port, batch_reqs, CONCURRENCY)
        for label, st in (("single", st1), ("batch", st2)):
            if set(st) != {202}:
                raise RuntimeError(f"ingest {label}: statuses {st}, expected only 202")
        single_rate = (n_single - 50) / t1.seconds
        batch_rate = n_batched / t2.seconds

    result.rows += [
        row("POST batches of 100", batch_rate, "events/s", "pipelined XADD, 100/round trip",
            ceiling, Goal("ratio", ">=", 0.5)),
        row("POST single events", single_rate, "events/s", "XADD, 1 per round trip",
            ceiling_single),
    ]
    ctx.note(f"{n_single - 50} single-event and {n_batched // 100} 100-event requests, HMAC "
             f"signed, over {CONCURRENCY} keep-alive connections from the bench process to "
             "one gateway process; client, gateway and Redis share the 2 cores")
    ctx.note("the ceiling writes the same entries without the idempotency marker script, "
             "validation or HTTP")

"""The adversarial suite: hostile input against ONE real gateway process.

A `livefeed gateway` and a `livefeed consumer fanout` run for the whole package (one
throwaway prefix and schema). Beside the hostile requests, a control publisher posts an
event every 50 ms and a control WebSocket client receives them: at the end it must have
every accepted event exactly once, in order, and never have been disconnected
(test_zz_final.py), and the gateway must have logged no traceback.

Every answer is counted per class of input (`Tally`): the figures are printed after the
run and written to `<tmp>/livefeed-adversarial.json`.

Authentication lives in the few helpers below (`auth_headers`, `ws_connect`,
`sse_connect`): the `Authorization: Bearer` header everywhere (on the WebSocket handshake
and the SSE request too, as non-browser clients may); the browser paths (the `auth`
message, SSE tickets) have their own tests in tests/gateway/test_tokens.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from livefeed.core import auth
from livefeed.core.keys import Keys
from livefeed.core.settings import Resolved
from livefeed.ops import namespace
from livefeed.schemas.frames import split_message
from tests.procs import Proc, start_gateway

SECRET = "adversarial-secret-long-enough-for-hs256!"
WEBHOOK_SECRET = "adversarial-webhook-secret"
CONTROL_USER = "control-user"
SUMMARY = Path(tempfile.gettempdir()) / "livefeed-adversarial.json"


# -- authentication: the one place that knows how a client presents its token ------------

def token(user: str, *, admin: bool = False) -> str:
    return auth.mint(SECRET, user, admin=admin)


def auth_headers(tok: str) -> dict[str, str]:
    """Headers carrying `tok` on an HTTP API."""
    return {"authorization": f"Bearer {tok}"}


async def ws_connect(base: str, tok: str, last_id: str | None = None,
                     **kw: Any) -> ClientConnection:
    """A WebSocket to /v1/ws authenticated as `tok` (the `Authorization` header on the
    handshake, as non-browser clients may), `last_id` sent as given (quoted)."""
    url = base.replace("http://", "ws://") + "/v1/ws"
    if last_id is not None:
        url += f"?last_id={quote(last_id, safe='')}"
    headers = {**auth_headers(tok), **kw.pop("additional_headers", {})}
    return await websockets.connect(url, open_timeout=20, additional_headers=headers, **kw)


def sse_connect(http: httpx.AsyncClient, base: str, tok: str,
                headers: dict[str, str] | None = None,
                params: dict[str, str] | None = None) -> Any:
    """`async with` a streaming GET /v1/sse authenticated as `tok`."""
    return http.stream("GET", f"{base}/v1/sse", params=params or {},
                       headers={**auth_headers(tok), **(headers or {})})


# -- what the suite counts ------------------------------------------------------------------

@dataclass
class Tally:
    """Inputs tried per class and their answers (HTTP status, close code, frame, exit)."""

    answers: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def record(self, cls: str, answer: str | int) -> None:
        self.answers[cls][str(answer)] += 1

    def figures(self) -> dict[str, Any]:
        classes = {cls: {"inputs": sum(c.values()), "answers": dict(sorted(c.items()))}
                   for cls, c in sorted(self.answers.items())}
        five = sum(n for c in self.answers.values() for a, n in c.items() if a.startswith("5"))
        return {"classes": classes, "inputs": sum(v["inputs"] for v in classes.values()),
                "answers_5xx": five, **CONTROL_FIGURES}


TALLY = Tally()
CONTROL_FIGURES: dict[str, Any] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY.answers:
        return
    figures = TALLY.figures()
    SUMMARY.write_text(json.dumps(figures, indent=2))
    terminalreporter.section("adversarial suite")
    for cls, data in figures["classes"].items():
        terminalreporter.write_line(f"{cls}: {data['inputs']} inputs, answers {data['answers']}")
    terminalreporter.write_line(
        f"total {figures['inputs']} inputs, {figures['answers_5xx']} x 5xx; control: "
        + ", ".join(f"{k}={v}" for k, v in CONTROL_FIGURES.items()) + f" ({SUMMARY})")


# -- the control traffic --------------------------------------------------------------------

class Control:
    """A publisher posting one event per `interval` to CONTROL_USER and a WebSocket client
    receiving them, each in a thread of its own (its own event loop), for the whole run."""

    def __init__(self, base: str, interval: float = 0.05) -> None:
        self.base = base
        self.interval = interval
        self.accepted: list[str] = []
        self.received: list[str] = []
        self.frames: list[str] = []  # frame types in arrival order
        self.closed: str | None = None  # why the client's connection ended, if it did
        self.post_failures: list[str] = []
        self.hello = threading.Event()
        self._stop_posting = threading.Event()
        self._stop_receiving = threading.Event()
        self._threads = [threading.Thread(target=self._receive, daemon=True),
                         threading.Thread(target=self._post, daemon=True)]

    def start(self) -> Control:
        self._threads[0].start()
        if not self.hello.wait(30):
            raise AssertionError(f"control client got no hello: {self.closed}")
        self._threads[1].start()
        # The first event through: the fan-out consumer runs (and made its groups).
        deadline = time.monotonic() + 60
        while not self.received and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.received:
            raise AssertionError(f"no control event came through: {self.post_failures[:3]}")
        return self

    def stop_posting(self) -> None:
        self._stop_posting.set()
        self._threads[1].join(30)

    def stop(self) -> None:
        self.stop_posting()
        self._stop_receiving.set()
        self._threads[0].join(30)

    def _post(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            i = 0
            while not self._stop_posting.is_set():
                event = {"id": str(uuid.uuid4()), "user_id": CONTROL_USER,
                         "subject": f"control #{i}", "sender": "control@example.com",
                         "received_at": datetime.now(UTC).isoformat()}
                body = json.dumps(event).encode()
                headers = {**auth.signature_headers(WEBHOOK_SECRET, body),
                           "content-type": "application/json"}
                try:
                    r = http.post("/v1/events", content=body, headers=headers)
                except httpx.HTTPError as exc:
                    self.post_failures.append(repr(exc))
                else:
                    if r.status_code == 202:
                        self.accepted.append(event["id"])
                    else:
                        self.post_failures.append(f"{r.status_code} {r.text[:200]}")
                i += 1
                time.sleep(self.interval)

    def _receive(self) -> None:
        asyncio.run(self._receive_async())

    async def _receive_async(self) -> None:
        try:
            # No keepalive pings: websockets draws their payload from `random`, which
            # Hypothesis (drawing in the main thread meanwhile) reports as misuse.
            conn = await ws_connect(self.base, token(CONTROL_USER), ping_interval=None)
        except Exception as exc:  # noqa: BLE001 (reported by `start`)
            self.closed = f"connect failed: {exc!r}"
            self.hello.set()
            return
        try:
            while not self._stop_receiving.is_set():
                try:
                    message = await asyncio.wait_for(conn.recv(), 0.2)
                except TimeoutError:
                    continue
                for raw in split_message(message):  # coalesced: one frame per line
                    frame = json.loads(raw)
                    self.frames.append(frame["type"])
                    if frame["type"] == "hello":
                        self.hello.set()
                    elif frame["type"] == "event":
                        self.received.append(frame["data"]["id"])
        except websockets.ConnectionClosed as exc:
            self.closed = f"closed by the gateway: {exc.rcvd!r}"
        finally:
            await conn.close()


# -- the target: one gateway and one fanout consumer for the package ------------------------

LEAK_GAUGES = ("livefeed_gateway_tasks", "livefeed_gateway_sessions", "livefeed_hub_channels",
               "livefeed_hub_listeners", 'livefeed_clients{transport="ws"}',
               'livefeed_clients{transport="sse"}')


def gauges(base: str) -> dict[str, float]:
    """The gateway's leak gauges (LEAK_GAUGES), read from its /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=30,
                     headers=auth_headers(token("operator", admin=True))).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in LEAK_GAUGES:
            out[name] = float(value)
    return out


@dataclass
class Target:
    base: str
    settings: Resolved
    keys: Keys
    gateway: Proc
    fanout: Proc
    control: Control
    log_dir: Path
    baseline: dict[str, float]  # LEAK_GAUGES with only the control client connected

    def admin(self) -> str:
        return token("operator", admin=True)


@pytest.fixture(scope="package")
def target(redis_url: str, postgres_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    prefix, schema = namespace.fresh_names("lfadv")
    log_dir = tmp_path_factory.mktemp("adversarial")
    dsn = asyncio.run(_create_schema(postgres_url, schema))
    settings = Resolved(redis_url=redis_url, database_url=dsn, prefix=prefix, secret=SECRET,
                        webhook_secret=WEBHOOK_SECRET, data_dir=str(log_dir / "data"))
    gateway: Proc | None = None
    fanout: Proc | None = None
    control: Control | None = None
    try:
        gateway, base = start_gateway(settings, log_dir)
        fanout = Proc(["consumer", "fanout", "--name", "adv-fanout"], settings, log_dir,
                      name="adv-fanout").start()
        control = Control(base).start()
        yield Target(base, settings, Keys(prefix), gateway, fanout, control, log_dir,
                     gauges(base))
    finally:
        if control is not None:
            control.stop()
        for proc in (fanout, gateway):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.kill()
        asyncio.run(_drop(redis_url, postgres_url, prefix, schema))


async def _create_schema(postgres_url: str, schema: str) -> str:
    import asyncpg

    from livefeed.core import db

    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    dsn = namespace.with_search_path(postgres_url, schema)
    await db.migrate_dsn(dsn)
    return dsn


async def _drop(redis_url: str, postgres_url: str, prefix: str, schema: str) -> None:
    with contextlib.suppress(Exception):
        await namespace.drop_schema(postgres_url, schema)
    with contextlib.suppress(Exception):
        await namespace.drop_keys(redis_url, Keys(prefix))


def gateway_log(target: Target) -> str:
    return target.gateway.log_path.read_text(errors="replace")

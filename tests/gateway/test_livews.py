"""`/v1/ws` on the gateway's own protocol (ops/livews.py), under uvicorn in this process
as `livefeed gateway` runs it: the handshake and what is refused before it, pings and
pongs, both close handshakes, the inbound bounds, uvicorn's keepalive and graceful
shutdown, raw writes once closed; most of it also on uvicorn's protocol and the ASGI
route, for parity (`either`). (The rest of `/v1/ws` runs on it too: tests/gateway/
test_ws.py, test_tokens.py, test_protocols.py, test_limits.py, tests/adversarial/.)"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import pytest
import websockets
from prometheus_client import REGISTRY
from websockets.exceptions import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from livefeed.core.settings import Resolved
from livefeed.gateway.app import create_app
from livefeed.ops import livews
from livefeed.ops.livews import LiveWs
from livefeed.ops.serve import Server
from livefeed.schemas.frames import CloseCode, ws_text_frame
from tests.gateway.livehelp import SECRET, WsClient, auth_message, served, token, ws_url
from tests.helpers.frames import closed_code
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.anyio


class RawClient:
    """A WebSocket client that does only what it is told (wsproto, client side): it
    answers no ping and no close by itself."""

    def __init__(self, sock: anyio.abc.SocketStream, conn: WSConnection) -> None:
        self.sock = sock
        self.conn = conn
        self.pending: deque[Event] = deque()

    @classmethod
    async def open(cls, url: str, target: str = "/v1/ws",
                   headers: list[tuple[bytes, bytes]] | None = None) -> tuple[RawClient, Event]:
        """The client and the server's answer to its handshake (accept or reject)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        client = cls(await anyio.connect_tcp(host, port), WSConnection(ConnectionType.CLIENT))
        await client.send(Request(host=f"{host}:{port}", target=target,
                                  extra_headers=headers or []))
        answer = await client.next()
        assert answer is not None, "no answer to the handshake"
        return client, answer

    async def send(self, event: Event) -> None:
        await self.sock.send(self.conn.send(event))

    async def next(self, timeout: float = 10) -> Event | None:
        """The next event from the server; None once it closed the socket."""
        with anyio.fail_after(timeout):
            while not self.pending:
                self.pending.extend(self.conn.events())
                if self.pending:
                    break
                try:
                    data = await self.sock.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return None
                self.conn.receive_data(data)
            return self.pending.popleft()

    async def until(self, want: Callable[[Event], bool], timeout: float = 10) -> Event:
        while True:
            event = await self.next(timeout)
            assert event is not None, "the server closed the socket"
            if want(event):
                return event

    async def aclose(self) -> None:
        await self.sock.aclose()


def bearer_header(user: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token(user)}".encode())]


@pytest.fixture(params=["ours", "uvicorn"])
def either(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Parity: `/v1/ws` on the gateway's own protocol, or (the upgrade hook off) on
    uvicorn's protocol and the ASGI route (`AsgiSocket`), as under any other server."""
    if request.param == "uvicorn":
        monkeypatch.setattr(livews, "serves", lambda *_: False)
    return str(request.param)


@contextlib.asynccontextmanager
async def gateway(settings_factory: Callable[..., Resolved], uvicorn: dict[str, Any] | None = None,
                  **overrides: Any) -> AsyncIterator[tuple[Server, str, Any]]:
    settings = settings_factory(secret=SECRET, **overrides)
    app = create_app(settings)
    async with served(app, settings, **(uvicorn or {})) as (server, url):
        yield server, url, app


def live(server: Server) -> list[LiveWs]:
    return [c for c in server.server_state.connections if isinstance(c, LiveWs)]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_v1_ws_is_ours_and_keeps_no_handshake_or_parser_state(
        settings_factory: Callable[..., Resolved]) -> None:
    async with gateway(settings_factory) as (server, url, _):
        header = await WsClient.open(ws_url(url, "alice"), header=True)
        message = await WsClient.open(ws_url(url, "bob"))  # an auth message, then idle
        for client in (header, message):
            await client.until(lambda c: c.types() == ["hello"])
        conns = list(server.server_state.connections)
        assert len(conns) == 2 and all(isinstance(c, LiveWs) for c in conns)
        for conn in live(server):
            # wsproto's h11 handshake dropped, its frame parser kept only while a frame is
            # partly received: an idle connection holds neither.
            assert conn._handshake is None and conn._request is None and conn._proto is None
        # Other paths are uvicorn's: Starlette answers an unknown WebSocket route with 403.
        other, answer = await RawClient.open(url, "/v1/elsewhere")
        assert isinstance(answer, RejectConnection) and answer.status_code == 403
        await other.aclose()
        for client in (header, message):
            await client.close()


async def test_a_bad_handshake_or_a_foreign_origin_is_refused_before_it(
        settings_factory: Callable[..., Resolved]) -> None:
    async with gateway(settings_factory, allowed_origins="https://app.example") as (_, url, _):
        parts = urlsplit(url)
        sock = await anyio.connect_tcp(parts.hostname or "", parts.port or 80)
        await sock.send(b"GET /v1/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n"
                        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")  # no key
        answer = b""
        with contextlib.suppress(anyio.EndOfStream, OSError), anyio.fail_after(10):
            while True:
                answer += await sock.receive()
        await sock.aclose()
        assert answer.startswith(b"HTTP/1.1 400 ")

        before = sample("livefeed_connections_refused_total", reason="origin")
        evil, refused = await RawClient.open(url, headers=[(b"origin", b"https://evil.example"),
                                                           *bearer_header("alice")])
        assert isinstance(refused, RejectConnection) and refused.status_code == 403
        while (after := await evil.next()) is not None:  # the socket closed after it
            assert isinstance(after, RejectData) and after.data == b""
        await evil.aclose()
        assert sample("livefeed_connections_refused_total", reason="origin") == before + 1
        for origin in (b"https://app.example", url.encode()):  # listed; the gateway's own
            ok, accepted = await RawClient.open(url, headers=[(b"origin", origin),
                                                              *bearer_header("alice")])
            assert isinstance(accepted, AcceptConnection), origin
            await ok.aclose()


async def test_tokens_keepalive_and_expiry_on_either_path(
        settings_factory: Callable[..., Resolved], either: str) -> None:
    async with gateway(settings_factory, auth_timeout_s=0.5, keepalive_s=0.3,
                       token_grace_s=0.2) as (server, url, _):
        header = await WsClient.open(ws_url(url, "alice"), header=True)
        message = await WsClient.open(ws_url(url, "bob"))
        for client in (header, message):
            await client.until(lambda c: c.types() == ["hello"])
        kinds = {type(c).__name__ for c in server.server_state.connections}
        assert kinds == ({"LiveWs"} if either == "ours" else {"Ws"}), kinds
        # Idle: the keepalive `ping` frames come (the deadline timer, or the watcher).
        await message.until_pings(2, timeout=10)
        assert message.types() == ["hello"]
        await header.close()
        await message.close()
        # A token in the URL; no auth message in time: 4001.
        in_url = await WsClient.open(ws_url(url, "alice"), header=True)
        await in_url.close()
        for target in (f"{url}/v1/ws?token={token('alice')}", f"{url}/v1/ws"):
            async with websockets.connect(target.replace("http", "ws")) as conn:
                with pytest.raises(ConnectionClosed) as closed, anyio.fail_after(10):
                    while True:
                        await conn.recv()
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == CloseCode.BAD_TOKEN, target
        # The token's exp plus the grace passes on the open connection: 4003.
        short = await WsClient.open(ws_url(url, "carol", tok=token("carol", ttl_s=1)))
        await short.until(lambda c: c.types() == ["hello"])
        assert await closed_code(short, timeout=10) == CloseCode.TOKEN_EXPIRED


async def test_pings_are_answered_and_a_client_close_is_answered(
        settings_factory: Callable[..., Resolved], either: str) -> None:
    async with gateway(settings_factory) as (server, url, app):
        client, accepted = await RawClient.open(url, headers=bearer_header("alice"))
        assert isinstance(accepted, AcceptConnection)
        hello = await client.until(lambda e: isinstance(e, TextMessage))
        assert isinstance(hello, TextMessage) and '"hello"' in hello.data
        await client.send(Ping(b"abc"))
        pong = await client.until(lambda e: isinstance(e, Pong))
        assert isinstance(pong, Pong) and bytes(pong.payload) == b"abc"

        sessions, connections = app.state.lf.sessions, server.server_state.connections
        assert len(sessions) == 1 and len(connections) == 1
        await client.send(CloseConnection(4321, "bye"))
        echo = await client.until(lambda e: isinstance(e, CloseConnection))
        assert isinstance(echo, CloseConnection) and echo.code == 4321
        assert await client.next() is None  # the server closed the socket
        await client.aclose()
        await eventually(lambda: not connections and len(sessions) == 0,
                         what="the connection and its session gone")


async def test_a_server_close_waits_for_the_answer_then_the_socket_goes(
        settings_factory: Callable[..., Resolved], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(livews, "CLOSE_TIMEOUT_S", 0.5)
    async with gateway(settings_factory) as (server, url, _):
        client, _ = await RawClient.open(url, headers=bearer_header("alice"))
        await client.until(lambda e: isinstance(e, TextMessage))
        conn, = live(server)
        extra = ws_text_frame(b'{"type":"ping"}')
        assert isinstance(conn.write(extra), int)  # open: written, the buffer reported
        assert await client.until(lambda e: isinstance(e, TextMessage)) == \
            TextMessage(data='{"type":"ping"}')
        await client.send(Message(data=auth_message(token("mallory"), "refresh")))
        close = await client.until(lambda e: isinstance(e, CloseConnection))
        assert isinstance(close, CloseConnection) and close.code == CloseCode.BAD_TOKEN
        assert conn.write(extra) is None  # closing: raw writes are refused
        # The client does not answer: the socket goes after the close timeout.
        assert await client.next(timeout=10) is None
        await client.aclose()
        assert conn.write(extra) is None
        await eventually(lambda: not live(server), what="the connection gone")

        # A client that answers is let go at once.
        polite = await WsClient.open(ws_url(url, "alice"))
        await polite.until(lambda c: c.types() == ["hello"])
        await polite.conn.send(auth_message(token("mallory"), "refresh"))
        assert await closed_code(polite) == CloseCode.BAD_TOKEN


async def test_inbound_messages_in_fragments_and_their_bounds(
        settings_factory: Callable[..., Resolved], either: str) -> None:
    async with gateway(settings_factory, ws_max_message=2048) as (_, url, _):
        # The auth message in three fragments authenticates.
        client, _ = await RawClient.open(url)
        text = auth_message(token("alice"))
        third = len(text) // 3
        for part, last in ((text[:third], False), (text[third:2 * third], False),
                           (text[2 * third:], True)):
            await client.send(Message(data=part, message_finished=last))
        hello = await client.until(lambda e: isinstance(e, TextMessage))
        assert isinstance(hello, TextMessage) and '"user":"alice"' in hello.data
        # Fragments over the bound together: 1009, before the message ends.
        before = sample("livefeed_ws_inbound_closes_total", code="1009")
        for _ in range(3):
            await client.send(Message(data="é" * 400, message_finished=False))  # 800 bytes
        close = await client.until(lambda e: isinstance(e, CloseConnection))
        assert isinstance(close, CloseConnection) and close.code == 1009
        assert sample("livefeed_ws_inbound_closes_total", code="1009") == before + 1
        await client.aclose()

        # Pings over LIVEFEED_WS_INBOUND_MESSAGES a second: 1008 (each answered until then).
        flood, _ = await RawClient.open(url, headers=bearer_header("bob"))
        for i in range(30):
            await flood.send(Ping(str(i).encode()))
        close = await flood.until(lambda e: isinstance(e, CloseConnection))
        assert isinstance(close, CloseConnection) and close.code == 1008
        await flood.aclose()


async def test_uvicorns_keepalive_closes_a_client_that_never_answers_pings(
        settings_factory: Callable[..., Resolved], either: str) -> None:
    keepalive = {"ws_ping_interval": 0.2, "ws_ping_timeout": 0.3}
    async with gateway(settings_factory, keepalive) as (_, url, _):
        answers = await WsClient.open(ws_url(url, "alice"))  # websockets answers pings
        await answers.until(lambda c: c.types() == ["hello"])
        mute, _ = await RawClient.open(url, headers=bearer_header("bob"))
        assert isinstance(await mute.until(lambda e: isinstance(e, Ping)), Ping)
        close = await mute.until(lambda e: isinstance(e, CloseConnection))
        assert isinstance(close, CloseConnection) and close.code == 1011
        assert await mute.next() is None
        await mute.aclose()
        with anyio.move_on_after(1):
            assert await closed_code(answers) is None, "closed although it answers pings"
        await answers.close()


async def test_drain_and_uvicorns_shutdown_close_with_1012(
        settings_factory: Callable[..., Resolved], either: str) -> None:
    async with gateway(settings_factory) as (server, url, app):
        drained = await WsClient.open(ws_url(url, "alice"))
        await drained.until(lambda c: c.types() == ["hello"])
        app.state.lf.draining.set()  # what SIGTERM does first: the sessions end, with 1012
        assert await closed_code(drained) == CloseCode.DRAINING
        late = await WsClient.open(ws_url(url, "bob"), header=True)  # opened meanwhile
        assert await closed_code(late) == CloseCode.DRAINING

    async with gateway(settings_factory) as (server, url, _):
        clients = [await WsClient.open(ws_url(url, f"u{i}")) for i in range(3)]
        for client in clients:
            await client.until(lambda c: c.types() == ["hello"])
        assert len(server.server_state.connections) == 3
        # uvicorn's own shutdown, without the app's drain: it closes them as its own.
        server.should_exit = True
        for client in clients:
            assert await closed_code(client) == CloseCode.DRAINING
        await eventually(lambda: not server.server_state.connections,
                         what="uvicorn counting them out")


async def test_a_message_right_after_the_auth_message_is_not_lost_on_either_path(
        settings_factory: Callable[..., Resolved], either: str) -> None:
    # The auth message and a refresh for another user in one write: the refresh arrives
    # before the session has started (its limits and presence check come first), and must
    # still end it with 4001 once it starts.
    async with gateway(settings_factory) as (_, url, _):
        client, answer = await RawClient.open(url)
        assert isinstance(answer, AcceptConnection)
        await client.sock.send(
            client.conn.send(TextMessage(auth_message(token("alice"))))
            + client.conn.send(TextMessage(auth_message(token("mallory"), "refresh"))))
        closed = await client.until(lambda e: isinstance(e, CloseConnection))
        assert isinstance(closed, CloseConnection) and closed.code == CloseCode.BAD_TOKEN
        await client.aclose()


async def test_the_access_log_names_the_client_a_trusted_proxy_forwards_on_either_path(
        settings_factory: Callable[..., Resolved], either: str) -> None:
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("uvicorn.error")
    handler = Lines()
    async with gateway(settings_factory) as (_, url, _):
        level = log.level
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        try:
            # From 127.0.0.1, which uvicorn trusts by default (--forwarded-allow-ips).
            client, answer = await RawClient.open(url, headers=[
                (b"x-forwarded-for", b"203.0.113.7"), *bearer_header("alice")])
            assert isinstance(answer, AcceptConnection)
            await client.aclose()
        finally:
            log.removeHandler(handler)
            log.setLevel(level)
    accepted = [line for line in lines if '"WebSocket /v1/ws" [accepted]' in line]
    assert len(accepted) == 1 and accepted[0].startswith("203.0.113.7:"), lines


async def test_each_idle_connection_keeps_one_deadline_entry(
        settings_factory: Callable[..., Resolved]) -> None:
    # The auth message's deadline, uvicorn's ping and the keepalive are scheduled at
    # different times while a connection opens; entries they superseded must not come back
    # as extra wake-ups, round after round.
    # (As by default, the auth message is due before uvicorn's first ping.)
    keepalive = {"ws_ping_interval": 0.4, "ws_ping_timeout": 5}
    async with gateway(settings_factory, keepalive, auth_timeout_s=0.15,
                       keepalive_s=0.25) as (server, url, _):
        clients = [await WsClient.open(ws_url(url, f"u{i}")) for i in range(5)]
        for client in clients:
            await client.until(lambda c: c.types() == ["hello"])
        conn = live(server)[0]
        deadlines = conn.upgrade.deadlines
        await anyio.sleep(1.5)  # several rounds of pings, past every superseded entry
        assert len(deadlines) == len(clients), len(deadlines)
        for client in clients:
            await client.close()

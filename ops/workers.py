"""`livefeed gateway --workers N`: N gateway processes sharing one listening socket.

The parent binds the port once and hands the socket to each child (`--fd`), so the kernel
spreads connections over them and a dying child loses no queued connection. SIGTERM is
forwarded: every child drains (WebSockets 1012, SSE streams end) and the parent waits.
A child that dies on its own is restarted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys

import anyio

from livefeed.core.settings import Settings
from livefeed.ops.procs import child_env

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Workers:
    def __init__(self, count: int, sock: socket.socket, settings: Settings) -> None:
        self.count = count
        self.sock = sock
        self.env = child_env(settings)
        self.drain_timeout_s = settings.drain_timeout_s
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def spawn(self) -> subprocess.Popen[bytes]:
        fd = self.sock.fileno()
        return subprocess.Popen(
            [sys.executable, "-m", "livefeed.ops.cli", "gateway", "--fd", str(fd)],
            env=self.env, pass_fds=(fd,), stdin=subprocess.DEVNULL,
        )

    async def supervise(self) -> None:
        self.children = [self.spawn() for _ in range(self.count)]
        logger.info("gateway workers: %s", [c.pid for c in self.children])
        while not self.stopping:
            for i, child in enumerate(self.children):
                if child.poll() is not None and not self.stopping:
                    logger.warning("gateway worker %d exited with %s; restarting", child.pid,
                                   child.returncode)
                    await anyio.sleep(RESTART_DELAY_S)
                    self.children[i] = self.spawn()
            await anyio.sleep(0.2)

    async def stop(self) -> int:
        self.stopping = True
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        with anyio.move_on_after(self.drain_timeout_s + 5):
            while any(c.poll() is None for c in self.children):
                await anyio.sleep(0.05)
        worst = 0
        for child in self.children:
            if child.poll() is None:
                logger.error("gateway worker %d ignored SIGTERM; killing it", child.pid)
                child.kill()
                child.wait()
            worst = worst or exit_status(child.returncode)
        return worst


def exit_status(returncode: int | None) -> int:
    """A worker's exit as the parent reports it. A worker that SIGTERM reached before its
    server installed its handlers died of the signal's default action (-15): it had not
    accepted a connection yet (the shared socket's queue stays with the others), so
    nothing was cut short and that stop is as clean as a drained one."""
    if returncode == -signal.SIGTERM:
        return 0
    return returncode or 0


async def run(args: argparse.Namespace, settings: Settings) -> int:
    sock = listen(args.host, args.port)
    workers = Workers(args.workers, sock, settings)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(workers.supervise)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            tg.cancel_scope.cancel()
        return await workers.stop()
    finally:
        sock.close()

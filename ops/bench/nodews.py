"""The Node `ws` baseline (issue 13): `ops/bench/node/ws_broadcast.mjs` with `ws` from npm.

`ws` is installed at bench time into a cache folder (`$XDG_CACHE_HOME/livefeed/bench-node/
<digest of package.json>`, never into the checkout); without `node`/`npm` on PATH, or if
the install fails, the baseline is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from livefeed.core.embedded import free_port
from livefeed.core.keys import Keys
from livefeed.ops.bench import procs
from livefeed.ops.procs import Child

SOURCE = Path(__file__).with_name("node")
FILES = ("package.json", "ws_broadcast.mjs")


class Unavailable(Exception):
    """Why the Node baseline cannot run here (said in the report, not an error)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livefeed" / "bench-node"


def prepare(root: Path | None = None, timeout: float = 180.0) -> tuple[str, Path]:
    """(node executable, folder holding the server and its node_modules); `npm install`
    runs once per version of package.json. Raises Unavailable with the reason."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise Unavailable("node/npm not on PATH")
    manifest = (SOURCE / "package.json").read_bytes()
    folder = (root or cache_root()) / hashlib.sha256(manifest).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(SOURCE / name, folder / name)
    if not (folder / "node_modules" / "ws" / "package.json").exists():
        try:
            proc = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--no-package-lock",
                 "--loglevel=error"],
                cwd=folder, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"npm install failed: {exc}") from exc
        if proc.returncode != 0:
            raise Unavailable(f"npm install failed ({proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return node, folder


@contextlib.contextmanager
def server(workdir: Path, redis_url: str, prefix: str, mode: str = "prebuilt",
           ) -> Iterator[tuple[Child, int]]:
    """The Node server on a free port, subscribed to `prefix`'s live channels."""
    node, folder = prepare()
    url = urlsplit(redis_url)
    if url.scheme not in ("redis", "") or url.password:
        raise Unavailable(f"the Node server speaks plain unauthenticated TCP RESP only "
                          f"(not {url.scheme}:// with a password)")
    port = free_port()
    child = Child([node, str(folder / "ws_broadcast.mjs"), str(port), url.hostname or "127.0.0.1",
                   str(url.port or 6379), Keys(prefix).live_pattern, mode],
                  dict(os.environ), workdir / f"node-ws-{mode}-{port}.log").start()
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", child)
        yield child, port
    finally:
        child.terminate()

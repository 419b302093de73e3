"""The README's "Use it from your code" snippets, run as they are written against a real
gateway and fanout consumer: the publisher's events reach the subscriber.

A snippet is the fenced block after a `<!-- snippet: NAME -->` line; it reads the
gateway's URL and its secrets from the environment (`FEED_URL`, `FEED_WEBHOOK_SECRET`,
`FEED_TOKEN`), which this test sets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from livefeed.core.settings import Settings
from tests.gateway.livehelp import SECRET, token
from tests.helpers.waiting import eventually
from tests.procs import Proc, start_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPET = re.compile(r"^<!-- snippet: ([\w-]+) -->\n```python\n(.*?)^```$", re.M | re.S)


def snippets(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, code in SNIPPET.findall(text):
        assert name not in found, f"two README snippets named {name!r}"
        found[name] = code
    return found


def test_the_readme_marks_its_snippets() -> None:
    found = snippets(README.read_text())
    assert {"publish", "subscribe"} <= set(found)
    for name, code in found.items():
        compile(code, f"README.md snippet {name}", "exec")  # each one is whole Python
    # The two commands at the top stay first.
    assert README.read_text().split("```")[1].split("\n")[1].startswith("ops/up")


def test_a_snippet_block_needs_its_marker() -> None:
    text = "<!-- snippet: one -->\n```python\nprint(1)\n```\n\n```python\nprint(2)\n```\n"
    assert snippets(text) == {"one": "print(1)\n"}


def _env(**values: str) -> dict[str, str]:
    # Only what a program of the reader's would have: no LIVEFEED_* settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEFEED_")}
    return {**env, **values}


async def test_the_publish_and_subscribe_snippets_work_against_a_gateway(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    code = snippets(README.read_text())
    settings = settings_factory(secret=SECRET)
    assert settings.webhook_secret
    gw, url = await anyio.to_thread.run_sync(start_gateway, settings, tmp_path)
    fanout = Proc(["consumer", "fanout"], settings, tmp_path).start()
    lines: list[str] = []

    def publish() -> str:
        done = subprocess.run(
            [sys.executable, "-c", code["publish"]], capture_output=True, text=True,
            timeout=60, env=_env(FEED_URL=url, FEED_WEBHOOK_SECRET=settings.webhook_secret or ""))
        assert done.returncode == 0, done.stderr
        return done.stdout

    async def follow(process: Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)

    try:
        assert await anyio.to_thread.run_sync(publish) == "accepted 3, duplicates 0\n"
        async with await anyio.open_process(
                [sys.executable, "-c", code["subscribe"]], stderr=subprocess.STDOUT,
                env=_env(FEED_URL=url, FEED_TOKEN=token("alice"))) as subscriber:
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow, subscriber)
                # The three published before it started: replayed from the feed's start.
                await eventually(lambda: len(lines) >= 3, what="the replayed events",
                                 procs=(fanout,), timeout=30)
                # Three more while it follows: live.
                await anyio.to_thread.run_sync(publish)
                await eventually(lambda: len(lines) >= 6, what="the live events",
                                 procs=(fanout,), timeout=30)
                subscriber.terminate()
    finally:
        gw.kill()
        fanout.kill()
    subjects = [line.split(" ", 1)[1] for line in lines[:6]]
    assert subjects == ["Issue 1", "Issue 2", "Issue 3"] * 2, lines
    ids = [line.split(" ", 1)[0] for line in lines[:6]]
    assert len(set(ids)) == 6 and all(re.fullmatch(r"\d+-\d+", i) for i in ids), lines

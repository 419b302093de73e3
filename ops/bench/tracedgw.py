"""A `livefeed` process (the gateway) that dumps its Python heap on SIGUSR1, for
`livefeed bench conn-memory`.

`python -m livefeed.ops.bench.tracedgw DIR FRAMES -- gateway --port P`: with FRAMES > 0,
tracemalloc traces every allocation with FRAMES frames of traceback from the start; each
SIGUSR1 writes `DIR/<k>.snapshot` (tracemalloc, when tracing), `DIR/<k>.types.json` (the
gc-tracked objects by type: count and shallow bytes) and then `DIR/<k>.done`.
"""

from __future__ import annotations

import gc
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

import msgspec


def census() -> dict[str, tuple[int, int]]:
    """{type name: (objects, shallow bytes)} over the gc-tracked objects."""
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        count[name] += 1
        size[name] += sys.getsizeof(obj)
    return {name: (count[name], size[name]) for name in count}


def install(folder: Path) -> None:
    dumps = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal dumps
        dumps += 1
        gc.collect()
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(folder / f"{dumps}.snapshot"))
        (folder / f"{dumps}.types.json").write_bytes(msgspec.json.encode(census()))
        (folder / f"{dumps}.done").touch()

    signal.signal(signal.SIGUSR1, dump)


def main() -> int:
    folder, frames, sep, *argv = sys.argv[1:]
    if sep != "--":
        raise SystemExit("usage: tracedgw DIR FRAMES -- livefeed arguments")
    Path(folder).mkdir(parents=True, exist_ok=True)
    if int(frames) > 0:
        tracemalloc.start(int(frames))
    install(Path(folder))
    from livefeed.ops.cli import main as livefeed

    return livefeed(argv)


if __name__ == "__main__":
    sys.exit(main())

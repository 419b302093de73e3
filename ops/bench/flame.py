"""py-spy's collapsed stacks (`--profile DIR`) as speedscope files, to open as flame graphs.

`<name>.txt` (one `frame;frame;... count` line per distinct stack, root first) becomes
`<name>.speedscope.json` beside it: drop it on https://www.speedscope.app or open it with
the `speedscope` CLI; nothing is uploaded by the bench.
"""

from __future__ import annotations

from pathlib import Path

import msgspec


class _Frame(msgspec.Struct):
    name: str


class _Shared(msgspec.Struct):
    frames: list[_Frame]


class _Profile(msgspec.Struct, rename="camel"):
    type: str
    name: str
    unit: str
    start_value: int
    end_value: int
    samples: list[list[int]]
    weights: list[int]


class Speedscope(msgspec.Struct, rename={"schema": "$schema"}):
    schema: str
    name: str
    exporter: str
    shared: _Shared
    profiles: list[_Profile]


def speedscope(collapsed: str, name: str) -> Speedscope:
    index: dict[str, int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples.append([index.setdefault(f, len(index)) for f in stack.split(";")])
        weights.append(int(count))
    return Speedscope(
        schema="https://www.speedscope.app/file-format-schema.json", name=name,
        exporter="livefeed bench", shared=_Shared([_Frame(f) for f in index]),
        profiles=[_Profile(type="sampled", name=name, unit="none", start_value=0,
                           end_value=sum(weights), samples=samples, weights=weights)],
    )


def convert(folder: Path) -> list[Path]:
    """Write a speedscope file beside each collapsed-stack file in `folder`."""
    out = []
    for path in sorted(folder.glob("*.txt")):
        target = path.with_suffix(".speedscope.json")
        target.write_bytes(msgspec.json.encode(speedscope(path.read_text(), path.stem)))
        out.append(target)
    return out

"""Summaries of py-spy's collapsed stacks: where each sampled process spent its time."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"(.*) \((.*?):\d+\)")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    func, path = m.groups()
    path = path.split("site-packages/")[-1]
    for root in ("/core/", "/gateway/", "/consumers/", "/schemas/", "/ops/"):
        if root in path:
            path = root.strip("/") + "/" + path.split(root, 1)[1]
    return f"{func} ({path})"


def summarize(path: Path, top: int = 8) -> tuple[int, list[tuple[str, float]]]:
    """(samples, [(frame, % of samples with it innermost)]) of one collapsed-stack file."""
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        own[_short(stack.split(";")[-1])] += int(count)
    return total, [(f, 100 * n / total) for f, n in own.most_common(top)] if total else []


def summaries(folder: Path) -> list[str]:
    lines = []
    for path in sorted(folder.glob("*.txt")):
        total, frames = summarize(path)
        lines.append(f"{path.stem}: {total} samples; self time: " + "; ".join(
            f"{pct:.0f}% {frame}" for frame, pct in frames if pct >= 2))
    return lines

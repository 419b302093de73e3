"""The browser client's TypeScript declarations (gateway/static/livefeed.d.ts) describe what
livefeed.js exports, with the gateway's close codes and frame types."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

from livefeed import gateway
from livefeed.schemas.frames import CloseCode, FrameType

STATIC = Path(gateway.__file__).parent / "static"
JS = (STATIC / "livefeed.js").read_text()
DTS = (STATIC / "livefeed.d.ts").read_text()


def js_exports() -> set[str]:
    names = set(re.findall(r"^export (?:async )?(?:function|class|const) (\w+)", JS, re.M))
    for group in re.findall(r"^export \{([^}]*)\};", JS, re.M):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    return names


def dts_exports() -> set[str]:
    found = re.findall(r"^export (?:declare )?(?:function|class|const|interface|type) (\w+)",
                       DTS, re.M)
    return set(found)


def test_the_declarations_cover_every_export_of_the_module() -> None:
    types_only = {"FeedEvent", "Status", "Role", "EventInfo", "ResetInfo", "Options"}
    assert dts_exports() - types_only == js_exports()


def test_the_declared_close_codes_and_frame_types_are_the_gateways() -> None:
    block = re.search(r"export declare const CLOSE: \{(.*?)\};", DTS, re.S)
    assert block, "no CLOSE in livefeed.d.ts"
    declared = {name: int(value) for name, value in
                re.findall(r"readonly (\w+): (\d+);", block.group(1))}
    assert declared == {code.name: code.value for code in CloseCode}
    frames = re.search(r"export declare const FRAME_TYPES: readonly (\[.*?\]);", DTS)
    assert frames, "no FRAME_TYPES in livefeed.d.ts"
    assert tuple(json.loads(frames.group(1))) == get_args(FrameType)

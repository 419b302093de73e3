"""The client-facing contract has one definition: the browser client repeats it by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

from livefeed import gateway
from livefeed.schemas.frames import CloseCode, Frame, FrameType

CLIENT_JS = Path(gateway.__file__).parent / "static" / "livefeed.js"


def js_const(name: str) -> str:
    found = re.search(rf"^\s*const {name} = (.+);$", CLIENT_JS.read_text(), re.MULTILINE)
    assert found, f"const {name} not found in {CLIENT_JS.name}"
    return found.group(1)


def test_the_browser_client_uses_the_python_close_codes() -> None:
    # `{ BAD_TOKEN: 4001, ... }` is JSON once its keys are quoted.
    js = json.loads(re.sub(r"(\w+):", r'"\1":', js_const("CLOSE")))
    assert js == {code.name: code.value for code in CloseCode}
    text = CLIENT_JS.read_text()
    for code in CloseCode:  # no bare number beside the constants
        assert text.count(str(code.value)) == 1, code


def test_the_browser_client_listens_to_every_frame_type() -> None:
    assert tuple(json.loads(js_const("FRAME_TYPES"))) == get_args(FrameType)
    tags = {t.__struct_config__.tag for t in get_args(Frame)}
    assert tags == set(get_args(FrameType))

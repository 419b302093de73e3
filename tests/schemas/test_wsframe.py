"""The server's WebSocket text frame encoder, read back by wsproto as a client would."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from livefeed.schemas.frames import ws_text_frame


def client_reads(data: bytes) -> list[tuple[Opcode, str, bool]]:
    """The frames a wsproto client decodes from `data`: (opcode, text, message finished)."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(data)
    return [(f.opcode, f.payload, f.message_finished) for f in client.received_frames()]


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_a_client_decodes_every_length_form(n: int) -> None:
    payload = bytes(ord("a") + i % 26 for i in range(n))
    frame = ws_text_frame(payload)
    assert client_reads(frame) == [(Opcode.TEXT, payload.decode(), True)]
    # The shortest length form (a client may refuse a longer one), no mask bit.
    header = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(frame) == header + n
    assert frame[0] == 0x81 and frame[1] & 0x80 == 0


def test_utf8_text_and_frames_back_to_back() -> None:
    first = '{"type":"event","data":"é ✓ 🙂"}'.encode()
    second = b"x" * 300
    assert client_reads(ws_text_frame(first) + ws_text_frame(second)) == [
        (Opcode.TEXT, first.decode(), True), (Opcode.TEXT, second.decode(), True)]

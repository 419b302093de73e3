"""What an operator sees of an event payload: its head (id, user) and a one-line preview.

Tolerant by design: pending entries and dead letters may hold anything, including
payloads that are not events at all.
"""

from __future__ import annotations

import msgspec

PREVIEW_CHARS = 72


class Head(msgspec.Struct):
    """The parts of an event a preview shows; anything else in the payload is ignored."""

    id: str | None = None
    user_id: str | None = None
    subject: str | None = None
    sender: str | None = None


_head_decoder = msgspec.json.Decoder(Head)


def event_head(data: bytes | str | None) -> Head | None:
    if data is None:
        return None
    try:
        return _head_decoder.decode(data)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None


def preview(data: bytes | str | None) -> str | None:
    """`sender: subject` of an event payload, or the start of it if it is not an event."""
    if data is None:
        return None
    head = event_head(data)
    if head is not None and head.subject is not None:
        text = f"{head.sender}: {head.subject}" if head.sender else head.subject
    else:
        text = data if isinstance(data, str) else data.decode(errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"

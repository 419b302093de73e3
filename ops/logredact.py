"""A logging filter that keeps tokens and tickets out of logs.

uvicorn logs every request line and every WebSocket path with its query string; clients
built before tokens left the URL still send `?token=`. Whatever logs a URL or a header,
this filter rewrites `token=` and `ticket=` query values, `Authorization` header values
and anything shaped like a JWT to `[redacted]` before a handler writes the record.
Installed on the handlers of the root and uvicorn loggers (`install`), so records that
propagate from any logger pass through it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"
_PATTERNS = (
    re.compile(r"(?i)([?&;](?:access_)?(?:token|ticket)=)[^&\s\"'#;]+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=,]\s*[\"']?(?:bearer\s+|basic\s+)?)"
               r"[^\s\"',;}]+"),
    re.compile(r"()\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]+"),
)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes | bytearray):
        return redact(bytes(value).decode("utf-8", "replace"))
    return value


class RedactTokens(logging.Filter):
    """Rewrites the message and its arguments in place (keeping their shape: uvicorn's
    access formatter unpacks `record.args`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_clean(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _clean(v) for k, v in args.items()}
        return True


FILTER = RedactTokens()
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "livefeed")


def install() -> None:
    """Put the filter on every handler of the root and uvicorn loggers (idempotent); call
    it again after something (uvicorn's Config) configured new handlers."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.addFilter(FILTER)  # records logged on it directly, even without a handler
        for handler in logger.handlers:
            handler.addFilter(FILTER)

"""The signing secret: `LIVEFEED_SECRET`, else one generated once and kept in the data dir.

The CLI (`livefeed token`) and the servers of `livefeed up` read the same file, so tokens
minted locally work against the embedded default.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from livefeed.core.settings import Settings, SettingsError

FILE_NAME = "secret"


def signing_secret(settings: Settings) -> str:
    """`settings.secret`, else the data dir's generated secret (created on first use)."""
    if settings.secret:
        return settings.secret
    return read_or_create(settings.data_path / FILE_NAME)


def read_or_create(path: Path) -> str:
    """The secret in `path`; a new random one, written owner-only, if there is none."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def previous_secret(settings: Settings) -> str | None:
    """The previous signing secret of a rotation (`LIVEFEED_SIGNING_SECRET_PREVIOUS`, or the
    file `LIVEFEED_SIGNING_SECRET_PREVIOUS_FILE` names), or None."""
    if settings.signing_secret_previous:
        return settings.signing_secret_previous
    if not settings.signing_secret_previous_file:
        return None
    path = Path(settings.signing_secret_previous_file)
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"LIVEFEED_SIGNING_SECRET_PREVIOUS_FILE={str(path)!r}: cannot "
                            f"read it ({exc.strerror})") from None
    return value or None


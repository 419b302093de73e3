"""The admin features served alone: the admin, metrics and health tests need no others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from livefeed.core.settings import Settings
from tests.gateway.livehelp import app_client as _app_client

MINE = ("livefeed.gateway.admin", "livefeed.gateway.metrics", "livefeed.gateway.health")


def app_client(settings: Settings, features: Sequence[str] = MINE) -> Any:
    """The admin features do not depend on the others: serve only them."""
    return _app_client(settings, features)

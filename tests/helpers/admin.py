"""The admin features served alone: the admin, metrics and health tests need no others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from livefeed.core.settings import Settings
from livefeed.gateway import admin, health, metrics
from livefeed.gateway.feature import Feature
from tests.gateway.livehelp import app_client as _app_client

MINE = (admin.FEATURE, metrics.FEATURE, health.FEATURE)


def app_client(settings: Settings, features: Sequence[Feature] = MINE) -> Any:
    """The admin features do not depend on the others: serve only them."""
    return _app_client(settings, features)

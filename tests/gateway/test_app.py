"""The app factory: features plugged in as objects, with what they need."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from starlette.routing import Route, WebSocketRoute

from livefeed.core.settings import Settings
from livefeed.gateway import health, hub, limits, presence, sse, ws
from livefeed.gateway.app import DEFAULT_FEATURES, create_app
from livefeed.gateway.feature import Feature

SETTINGS = Settings(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x@127.0.0.1:1/x")


def paths(features: Sequence[Feature] = DEFAULT_FEATURES) -> set[str]:
    app = create_app(SETTINGS, features)
    return {r.path for r in app.routes if isinstance(r, Route | WebSocketRoute)}


def test_the_default_gateway_serves_every_feature() -> None:
    assert {"/v1/events", "/v1/ws", "/v1/sse", "/v1/feed", "/", "/admin", "/metrics",
            "/healthz", "/readyz"} <= paths()


def test_a_subset_serves_only_its_routes() -> None:
    assert paths((health.FEATURE,)) == {"/healthz", "/readyz"}


@pytest.mark.parametrize("live", [ws.FEATURE, sse.FEATURE])
def test_a_live_transport_without_the_hub_fails_at_start(live: Feature) -> None:
    with pytest.raises(ValueError, match="needs hub, limits: add it"):
        paths((live,))
    with pytest.raises(ValueError, match="needs presence: add it"):
        paths((hub.FEATURE, limits.FEATURE, live))
    assert paths((hub.FEATURE, presence.FEATURE, limits.FEATURE, live))

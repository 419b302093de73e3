"""A gateway feature: the routes it serves and the resources it holds, as `create_app`
(gateway/app.py) plugs them in."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from starlette.routing import BaseRoute

from livefeed.gateway.operation import Channel, Operation
from livefeed.gateway.state import GatewayState

# Opens a feature's resources for the app's lifetime and sets its field of the state.
Lifespan = Callable[[GatewayState], AbstractAsyncContextManager[None]]


def no_routes() -> list[BaseRoute]:
    return []


@dataclass(frozen=True)
class Feature:
    """One part of the gateway. `needs`: the features it uses, which `create_app` insists
    are plugged in too (the WebSocket needs the hub). `operations` and `channels` declare
    what its HTTP and WebSocket routes take and answer (gateway/operation.py): the
    OpenAPI document is generated from them."""

    name: str
    routes: Callable[[], list[BaseRoute]] = no_routes
    lifespan: Lifespan | None = None
    needs: tuple[Feature, ...] = ()
    operations: tuple[Operation, ...] = ()
    channels: tuple[Channel, ...] = ()

"""What an HTTP route of the gateway takes and answers, declared next to the route.

Each feature lists an `Operation` per method and path it serves (`Feature.operations`),
and a `Channel` per WebSocket route;
gateway/openapi.py turns them, with the msgspec bodies of schemas/, into the OpenAPI 3.1
document served at `/openapi.json`. tests/gateway/test_openapi.py fails when a route has
no operation or an operation names no route.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Method = Literal["GET", "POST"]
Where = Literal["query", "header", "path"]

# Security scheme names (gateway/openapi.py describes each).
USER_TOKEN = "userToken"
ADMIN_TOKEN = "adminToken"
WEBHOOK_SIGNATURE = "webhookSignature"
WEBHOOK_TIMESTAMP = "webhookTimestamp"

# Security requirements: any one of the alternatives, each needing all its schemes.
Security = tuple[tuple[str, ...], ...]
PUBLIC: Security = ()
USER: Security = ((USER_TOKEN,),)
ADMIN: Security = ((ADMIN_TOKEN,),)


@dataclass(frozen=True)
class Param:
    """A query, header or path parameter; `type` is any type msgspec can describe."""

    name: str
    where: Where
    description: str
    type: Any = str
    required: bool = False


@dataclass(frozen=True)
class Answer:
    """One response: `body` a msgspec type for a JSON body (None: no schema; a non-JSON
    `media_type` is described as a string), `headers` the response headers it sets."""

    description: str
    body: Any = None
    media_type: str = "application/json"
    headers: tuple[Param, ...] = ()


@dataclass(frozen=True)
class Operation:
    """One method on one path (`path` in OpenAPI form: `/admin/api/dead/{id}`)."""

    method: Method
    path: str
    operation_id: str
    summary: str
    tag: str
    responses: Mapping[int, Answer]
    description: str = ""
    params: tuple[Param, ...] = ()
    body: Any = None  # a msgspec type: the JSON request body (required when given)
    security: Security = PUBLIC


@dataclass(frozen=True)
class Channel:
    """A WebSocket route. OpenAPI cannot describe one: its text goes into the description
    of its tag (and the docs page), and the coverage test counts it as declared."""

    path: str
    tag: str
    description: str
    frames: Any = None  # the type of its messages (JSON), a component named `frames_name`
    frames_name: str = "Frame"

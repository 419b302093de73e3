"""`/`: the demo feed page, and `/static/...`: its script (the JS client) and style."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from livefeed.gateway.feature import Feature

STATIC = Path(__file__).parent / "static"


async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


def routes() -> list[BaseRoute]:
    return [Route("/", index), Mount("/static", StaticFiles(directory=STATIC), name="static")]


FEATURE = Feature("page", routes)

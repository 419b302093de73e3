"""`/`: the demo feed page, and `/static/...`: its script (the JS client) and style."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from livefeed.gateway.feature import Feature
from livefeed.gateway.operation import Answer, Operation, Param

STATIC = Path(__file__).parent / "static"


async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


def routes() -> list[BaseRoute]:
    return [Route("/", index), Mount("/static", StaticFiles(directory=STATIC), name="static")]


OPERATIONS = (
    Operation("GET", "/", "getPage", "The demo feed page", "pages",
              description="Open it with `?token=` (printed by `livefeed up`).",
              responses={200: Answer("The page", media_type="text/html")}),
    Operation("GET", "/static/{file}", "getStatic", "The page's files", "pages",
              description="`livefeed.js` (the browser client: resume, reconnect, `reset`) "
                          "and `livefeed.css`.",
              params=(Param("file", "path", "the file's name"),),
              responses={200: Answer("The file", media_type="*/*"),
                         404: Answer("No such file", media_type="text/plain")}),
)

FEATURE = Feature("page", routes, operations=OPERATIONS)

"""The plain Starlette app of `ops.bench.plainws` served by granian (Rust HTTP/WebSocket,
ASGI interface, uvloop): one server candidate of issue 13.

`python -m livefeed.ops.bench.granianplain --port P --redis URL --prefix P`. granian
runs the app in a worker process (the process started here supervises it): its RSS and
CPU are measured over the process tree.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from livefeed.ops.bench import plainws
from livefeed.ops.bench.baseline import server_args


def factory() -> Starlette:
    return plainws.app(os.environ["LFB_PLAIN_REDIS"], os.environ["LFB_PLAIN_PREFIX"])


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    a = server_args()
    os.environ["LFB_PLAIN_REDIS"], os.environ["LFB_PLAIN_PREFIX"] = a.redis, a.prefix
    Granian("livefeed.ops.bench.granianplain:factory", address="127.0.0.1", port=a.port,
            interface=Interfaces.ASGI, factory=True, workers=1, loop=Loops.uvloop,
            websockets=True, backlog=4096, log_enabled=False).serve()


if __name__ == "__main__":
    main()

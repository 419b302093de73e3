"""Who an HTTP request is: a token in `Authorization: Bearer <token>`, never in the URL.

A URL ends up in access logs, proxy logs, browser history and `Referer` headers, so a
`?token=` is refused outright (401, saying to use the header) even when a header is also
there. A header cannot be set by a cross-site form or a plain `<img>`, which is what keeps
the admin API's POSTs from being forged from another site.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import HTTPConnection

from livefeed.core import auth
from livefeed.gateway.state import GatewayState

QUERY_TOKEN_REFUSED = ("a token in the URL (?token=) is refused: send it as "
                       "`Authorization: Bearer <token>`")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def authenticate(conn: HTTPConnection) -> auth.Claims:
    """The claims of the request's bearer token; raises auth.InvalidToken with a message
    fit for the 401 (a `?token=` in the URL is refused whatever the header says)."""
    if "token" in conn.query_params:
        raise auth.InvalidToken(QUERY_TOKEN_REFUSED)
    state: GatewayState = conn.app.state.lf
    return state.verify(bearer_token(conn.headers))

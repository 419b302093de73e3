"""Signed tokens for browsers (`sub` = user) and operators (`adm` = true), and webhook HMAC."""

from __future__ import annotations

import hashlib
import hmac
import time

import jwt
import msgspec

from livefeed.core.errors import LivefeedError
from livefeed.schemas.event import USER_ID_RULE, valid_user_id

ALGORITHM = "HS256"
DEFAULT_TTL_S = 24 * 3600
SIGNATURE_HEADER = "x-livefeed-signature"


class Claims(msgspec.Struct, frozen=True):
    user: str
    admin: bool


class InvalidToken(LivefeedError):
    """The token is missing, malformed, badly signed or expired."""


def mint(secret: str, user: str, *, admin: bool = False, ttl_s: int = DEFAULT_TTL_S) -> str:
    """A token for `user`; raises ValueError for a user id ingest would refuse."""
    if not valid_user_id(user):
        raise ValueError(f"not a valid user id: {user!r} ({USER_ID_RULE})")
    now = int(time.time())
    payload: dict[str, object] = {"sub": user, "iat": now, "exp": now + ttl_s}
    if admin:
        payload["adm"] = True
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str | None) -> Claims:
    if not token:
        raise InvalidToken("missing token")
    try:
        payload = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    user = payload["sub"]
    if not isinstance(user, str) or not valid_user_id(user):
        raise InvalidToken("the token's subject is not a valid user id")
    return Claims(user=user, admin=payload.get("adm") is True)


def sign_body(secret: str, body: bytes) -> str:
    """The `X-Livefeed-Signature` header value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_body_signature(secret: str, body: bytes, header: str | None) -> bool:
    # compare_digest raises TypeError on a non-ASCII str: such a header is no signature.
    if not header or not header.isascii() or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign_body(secret, body), header)

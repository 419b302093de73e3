"""Signed tokens for browsers (`sub` = user) and operators (`adm` = true), and webhook HMAC.

Tokens verify against the current signing secret and, during a rotation, the previous one.
Webhook bodies are signed together with a timestamp (`X-Livefeed-Timestamp`,
`X-Livefeed-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`), so a captured
request is refused once the timestamp is older than the tolerance. The untimed scheme
(`sha256=<hex HMAC of the body>`) is replayable for ever; it is accepted only when enabled.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence

import jwt
import msgspec

from livefeed.core.errors import LivefeedError
from livefeed.schemas.event import USER_ID_RULE, valid_user_id

ALGORITHM = "HS256"
DEFAULT_TTL_S = 24 * 3600
SIGNATURE_HEADER = "x-livefeed-signature"
TIMESTAMP_HEADER = "x-livefeed-timestamp"
DEFAULT_TOLERANCE_S = 300


class Claims(msgspec.Struct, frozen=True):
    user: str
    admin: bool
    exp: float = 0.0  # unix seconds; the connection deadline is exp + LIVEFEED_TOKEN_GRACE


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


def verify(secrets: str | Sequence[str], token: str | None) -> Claims:
    """The claims of `token`, signed with one of `secrets` (the current one first, then the
    previous one of a rotation). Raises InvalidToken."""
    if not token:
        raise InvalidToken("missing token")
    keys = [secrets] if isinstance(secrets, str) else [s for s in secrets if s]
    payload: dict[str, object] | None = None
    for i, key in enumerate(keys):
        try:
            payload = jwt.decode(
                token, key, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
            )
            break
        except jwt.InvalidSignatureError:
            if i == len(keys) - 1:
                raise InvalidToken("Signature verification failed") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
    if payload is None:
        raise InvalidToken("no signing secret")
    user = payload["sub"]
    if not isinstance(user, str) or not valid_user_id(user):
        raise InvalidToken("the token's subject is not a valid user id")
    exp = payload["exp"]
    return Claims(user=user, admin=payload.get("adm") is True,
                  exp=float(exp) if isinstance(exp, int | float) else 0.0)


class Verifier:
    """`verify` with fixed secrets, keeping the last `size` tokens that verified: a token
    that verified once verifies again, with the same claims, until its `exp` (the secrets
    do not change), so a client that reconnects with it (a page load, a dropped network)
    skips the signature check: ~25 µs in a loop, ~175 µs timed in place on a reconnect
    (BENCHMARKS.md). Only tokens that verified are kept; one whose `exp` has passed is
    checked anew, and refused as before. At most `size` entries, the oldest go first."""

    __slots__ = ("secrets", "_seen", "_size")

    def __init__(self, secrets: str | Sequence[str], size: int = 1024) -> None:
        self.secrets = secrets
        self._seen: dict[str, Claims] = {}
        self._size = size

    def __call__(self, token: str | None) -> Claims:
        if token:
            claims = self._seen.get(token)
            if claims is not None and time.time() < claims.exp:
                return claims
        claims = verify(self.secrets, token)
        assert token  # verify refused a missing one
        seen = self._seen
        if token not in seen and len(seen) >= self._size:
            del seen[next(iter(seen))]
        seen[token] = claims
        return claims


_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _mac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(secret: str, body: bytes, timestamp: int | None = None,
                      ) -> dict[str, str]:
    """The `X-Livefeed-Timestamp` and `X-Livefeed-Signature` headers for `body` (now)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: "v1=" + _mac(secret, f"{ts}.".encode() + body)}


def untimed_signature(secret: str, body: bytes) -> str:
    """The old `X-Livefeed-Signature: sha256=...` value (no timestamp: replayable)."""
    return "sha256=" + _mac(secret, body)


def check_signature(secret: str, body: bytes, signature: str | None, timestamp: str | None,
                    *, tolerance_s: float = DEFAULT_TOLERANCE_S, allow_untimed: bool = False,
                    now: float | None = None) -> str | None:
    """None if the signature headers authenticate `body`, else why not (for the 401)."""
    if not signature:
        return "no X-Livefeed-Signature header"
    # compare_digest raises TypeError on a non-ASCII str: such a header is no signature.
    if not signature.isascii():
        return "X-Livefeed-Signature: expected v1=<hex HMAC-SHA256>"
    if signature.startswith("sha256="):
        if not allow_untimed:
            return ("untimed signatures (sha256=) are refused: sign the timestamp with the "
                    "body (X-Livefeed-Timestamp, X-Livefeed-Signature: v1=...)")
        if hmac.compare_digest(untimed_signature(secret, body), signature):
            return None
        return "the signature does not match the body"
    if not signature.startswith("v1="):
        return "X-Livefeed-Signature: expected v1=<hex HMAC-SHA256>"
    # ASCII digits, few of them (`int` takes "²" and fails past 4,300 digits).
    if not timestamp or not _TIMESTAMP.fullmatch(timestamp.strip()):
        return "X-Livefeed-Timestamp: expected unix seconds"
    ts = int(timestamp)
    expected = "v1=" + _mac(secret, f"{ts}.".encode() + body)
    if not hmac.compare_digest(expected, signature.strip()):
        return "the signature does not match the timestamp and body"
    skew = abs((time.time() if now is None else now) - ts)
    if skew > tolerance_s:
        return (f"the signature's timestamp is {int(skew)} s away from now (tolerance "
                f"{int(tolerance_s)} s): a replayed or delayed request")
    return None

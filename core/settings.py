"""One typed settings object, read once from the `LIVEFEED_*` environment by entry points.

Library code never reads the environment: it takes constructor arguments. `Settings` is
what was configured: an unset server URL means "the embedded default, or the servers of a
running `livefeed up`". Running roles take `Resolved`, whose URLs are known
(`Settings.resolve`). The generated signing secret lives in `core.secretfile`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from livefeed.core.errors import LivefeedError
from livefeed.schemas.frames import Delivery


class SettingsError(LivefeedError, ValueError):
    """A setting is wrong; the message names it and says the fix."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every `LIVEFEED_*` setting (see `env_name` for the variable of each field)."""

    redis_url: str | None = None
    redis_cluster: bool = False
    database_url: str | None = None
    delivery: Delivery = "streams"
    prefix: str = "lf"
    # Fixed per deployment: key names depend on it (docs/design.md: changing it).
    partitions: int = 16
    # How long a consumer's partition lease lives without renewal (a dead consumer's
    # partitions move after about this long).
    lease_ms: int = 6_000
    # Ingest answers 202 only once the append reached this many replicas (WAIT).
    ingest_replicas: int = 0
    secret: str | None = None
    # During a rotation: tokens signed with it still verify (new ones use `secret`).
    signing_secret_previous: str | None = None
    signing_secret_previous_file: str | None = None  # a file holding it, instead
    webhook_secret: str | None = None
    # Webhook signatures carry a timestamp; older (or newer) than this is refused.
    signature_tolerance_s: int = 300
    # The old `sha256=<hmac(body)>` scheme, without a timestamp: replayable, off by default.
    allow_untimed_signatures: bool = False
    # A WebSocket's first message must authenticate it within this many seconds.
    auth_timeout_s: float = 10.0
    # An open connection outlives its token's `exp` by this many seconds (then 4003).
    token_grace_s: float = 10.0
    # Server keepalive: a `ping` frame (WebSocket) or comment (SSE) after this much idling.
    keepalive_s: float = 15.0
    data_dir: str = ".livefeed"
    feed_maxlen: int = 10_000
    dead_maxlen: int = 100_000  # lf:dead, trimmed approximately: the oldest letters go first
    max_deliveries: int = 5
    batch_size: int = 100
    flush_ms: int = 500
    claim_idle_ms: int = 30_000
    dedupe_ttl_s: int = 7 * 24 * 3600
    send_queue: int = 1_000
    # Bytes a WebSocket's transport may hold for its client after a write (more: 4008).
    send_buffer: int = 1 << 20
    # Frames written together when a session has several ready (one WebSocket message of
    # `\n`-separated frames, one SSE write); 1 sends each frame on its own.
    coalesce: int = 16
    drain_timeout_s: float = 10.0
    log_level: str = "INFO"
    # Browser-facing limits (gateway/headers.py, gateway/limits.py, ops/protocols.py).
    # Origins allowed on /v1/ws and /v1/sse besides the request's own host: comma-separated
    # `scheme://host[:port]`, or `*` for any.
    allowed_origins: str = ""
    header_timeout_s: float = 10.0  # a request's headers must be complete within this
    body_timeout_s: float = 30.0  # ... and its body within this after them
    ws_max_message: int = 4096  # bytes of one inbound WebSocket message (more: close 1009)
    ws_inbound_messages: float = 10.0  # inbound WebSocket frames per second (more: 1008)
    ws_inbound_bytes: int = 16_384  # inbound WebSocket bytes per second (more: 1008)
    max_connections: int = 50_000  # live connections per gateway process (more: 4029)
    max_user_connections: int = 32  # live connections per user over all gateways
    connect_rate: float = 1_000.0  # new live connections per second per gateway process
    presence_ttl_s: float = 30.0  # a connection's presence entry lives this long unrenewed
    # A user's live channel stays subscribed this long after its last session left here.
    hub_linger_s: float = 5.0
    metrics_token: str | None = None  # bearer token for /metrics (else an admin token)

    def __repr__(self) -> str:
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in _SECRETS and value is not None:
                value = "***"
            elif name in _URLS and value is not None:
                value = _hide_password(value)
            shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    __str__ = __repr__

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def resolve(self, *, redis_url: str | None = None,
                database_url: str | None = None) -> Resolved:
        """These settings with both server URLs known: the configured ones, else those
        given (embedded servers, or a running `livefeed up`'s)."""
        urls = {"redis_url": self.redis_url or redis_url,
                "database_url": self.database_url or database_url}
        missing = [env_name(name) for name, url in urls.items() if url is None]
        if missing:
            raise SettingsError(
                f"{' and '.join(missing)} not set: set them, or start `livefeed up`"
            )
        resolved = Resolved(**{**msgspec.structs.asdict(self), **urls})
        validate(resolved)
        return resolved


class Resolved(Settings, kw_only=True, frozen=True):
    """Settings of a running role: the server URLs are known (`Settings.resolve`)."""

    redis_url: str
    database_url: str


_SECRETS = frozenset({"secret", "webhook_secret", "signing_secret_previous", "metrics_token"})
_URLS = frozenset({"redis_url", "database_url"})
ENV_PREFIX = "LIVEFEED_"
# Names that differ between the environment and the struct (the env keeps the contract's names).
_ENV_NAMES = {"dedupe_ttl_s": "DEDUPE_TTL", "drain_timeout_s": "DRAIN_TIMEOUT",
              "signature_tolerance_s": "SIGNATURE_TOLERANCE", "auth_timeout_s": "AUTH_TIMEOUT",
              "token_grace_s": "TOKEN_GRACE", "keepalive_s": "KEEPALIVE",
              "header_timeout_s": "HEADER_TIMEOUT", "body_timeout_s": "BODY_TIMEOUT",
              "presence_ttl_s": "PRESENCE_TTL", "hub_linger_s": "HUB_LINGER"}


def env_name(field: str) -> str:
    return ENV_PREFIX + _ENV_NAMES.get(field, field.upper())


def flag_name(field: str) -> str:
    return "--" + env_name(field)[len(ENV_PREFIX) :].lower().replace("_", "-")


def field_names() -> tuple[str, ...]:
    return Settings.__struct_fields__


def to_env(settings: Settings) -> dict[str, str]:
    """The `LIVEFEED_*` variables that reproduce `settings` (in a child process)."""
    env: dict[str, str] = {}
    for name in field_names():
        value = getattr(settings, name)
        if value is not None:
            env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def load(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from `env` (default: os.environ), then `overrides` (CLI flags), validated."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for name in field_names():
        value = env.get(env_name(name))
        if value not in (None, ""):
            raw[name] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
    validate(settings)
    return settings


def _explain(exc: msgspec.ValidationError) -> str:
    message = str(exc)
    # msgspec says "... - at `$.delivery`"; name the environment variable instead.
    if "at `$." in message:
        field = message.rsplit("at `$.", 1)[1].rstrip("`").split(".")[0].split("[")[0]
        if field in field_names():
            detail = message.rsplit(" - at ", 1)[0]
            hint = _HINTS.get(field, "")
            return f"{env_name(field)} ({flag_name(field)}): {detail}{hint}"
    return message


_HINTS = {
    "delivery": "; use 'streams' (default), or 'pubsub' or 'list' (comparison baselines)",
    "redis_cluster": "; use true or false",
    "allow_untimed_signatures": "; use true or false",
}


def validate(s: Settings) -> None:
    if s.redis_url is not None:
        scheme = urlsplit(s.redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(
                f"{env_name('redis_url')}={_hide_password(s.redis_url)!r}: expected "
                "redis://host:port/db, rediss://... or unix:///path; unset it to use "
                "the embedded Redis"
            )
    if s.database_url is not None:
        scheme = urlsplit(s.database_url).scheme
        if scheme not in ("postgresql", "postgres"):
            raise SettingsError(
                f"{env_name('database_url')}={_hide_password(s.database_url)!r}: expected "
                "postgresql://user@host:port/db; unset it to use the embedded PostgreSQL"
            )
    if not s.prefix or any(c in s.prefix for c in "{}* \t"):
        raise SettingsError(
            f"{env_name('prefix')}={s.prefix!r}: use letters, digits, ':', '-' or '_'"
        )
    if not 1 <= s.partitions <= 256:
        raise SettingsError(f"{env_name('partitions')}={s.partitions}: use 1..256 (key names "
                            "depend on it: keep the deployment's value)")
    if s.lease_ms < 100:
        raise SettingsError(f"{env_name('lease_ms')}={s.lease_ms}: use at least 100 ms")
    if s.ingest_replicas < 0:
        raise SettingsError(f"{env_name('ingest_replicas')} must be 0 or more")
    for name in ("feed_maxlen", "dead_maxlen", "max_deliveries", "batch_size", "flush_ms",
                 "send_queue", "send_buffer", "coalesce"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{env_name(name)} must be a positive integer")
    for name in ("auth_timeout_s", "keepalive_s"):
        if not getattr(s, name) > 0:
            raise SettingsError(f"{env_name(name)} must be a positive number of seconds")
    for name in ("token_grace_s", "signature_tolerance_s", "hub_linger_s"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{env_name(name)} must be 0 or more seconds")
    if s.signing_secret_previous and s.signing_secret_previous_file:
        raise SettingsError(f"set {env_name('signing_secret_previous')} or "
                            f"{env_name('signing_secret_previous_file')}, not both")
    _validate_limits(s)
    if s.redis_cluster and s.redis_url is None:
        raise SettingsError(
            f"{env_name('redis_cluster')}=true needs {env_name('redis_url')} "
            "(the embedded Redis is a single node)"
        )


def _validate_limits(s: Settings) -> None:
    for name in ("header_timeout_s", "body_timeout_s", "ws_inbound_messages", "connect_rate",
                 "presence_ttl_s"):
        if not getattr(s, name) > 0:
            raise SettingsError(f"{env_name(name)} must be a positive number")
    for name in ("ws_max_message", "ws_inbound_bytes", "max_connections",
                 "max_user_connections"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{env_name(name)} must be a positive integer")
    if s.ws_inbound_bytes < s.ws_max_message:
        raise SettingsError(f"{env_name('ws_inbound_bytes')}={s.ws_inbound_bytes} is below "
                            f"{env_name('ws_max_message')}={s.ws_max_message}: one largest "
                            "message must fit in a second's budget")
    for origin in origin_list(s.allowed_origins):
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or \
                parts.path or parts.query or parts.fragment or parts.username:
            raise SettingsError(
                f"{env_name('allowed_origins')}: {origin!r} is not an origin; use "
                "comma-separated scheme://host[:port] (https://app.example.com), or *"
            )


def origin_list(value: str) -> tuple[str, ...]:
    """`LIVEFEED_ALLOWED_ORIGINS` as a tuple of origins (lower case, no trailing slash)."""
    return tuple(o.strip().lower().rstrip("/") for o in value.split(",") if o.strip())

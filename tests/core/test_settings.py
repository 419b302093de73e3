from __future__ import annotations

from pathlib import Path

import pytest

from livefeed.core import settings as settings_mod
from livefeed.core.groups import RunnerConfig
from livefeed.core.secretfile import previous_secret, signing_secret
from livefeed.core.settings import Resolved, SettingsError


def test_defaults_match_the_contract() -> None:
    s = settings_mod.load({})
    assert (s.delivery, s.prefix, s.data_dir) == ("streams", "lf", ".livefeed")
    assert s.feed_maxlen == 10_000 and s.dead_maxlen == 100_000
    assert s.redis_url is None and s.database_url is None


def test_environment_then_flags() -> None:
    env = {"LIVEFEED_DELIVERY": "pubsub", "LIVEFEED_FEED_MAXLEN": "50", "LIVEFEED_DEAD_MAXLEN": "7",
           "LIVEFEED_REDIS_CLUSTER": "false", "LIVEFEED_PREFIX": "x"}
    s = settings_mod.load(env, prefix="y")
    assert (s.delivery, s.feed_maxlen, s.redis_cluster, s.prefix) == ("pubsub", 50, False, "y")
    assert RunnerConfig.from_settings(s, linger=False).dead_maxlen == 7


def test_repr_hides_secrets_and_passwords() -> None:
    s = settings_mod.load({
        "LIVEFEED_SECRET": "s3cret", "LIVEFEED_WEBHOOK_SECRET": "whsec-42",
        "LIVEFEED_DATABASE_URL": "postgresql://u:pw@h/db",
    })
    shown = repr(s)
    assert "s3cret" not in shown and "whsec-42" not in shown and "pw@" not in shown
    assert "postgresql://u:***@h/db" in shown


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LIVEFEED_DELIVERY": "kafka"}, ["LIVEFEED_DELIVERY", "'streams'"]),
        ({"LIVEFEED_REDIS_URL": "http://x"}, ["LIVEFEED_REDIS_URL", "redis://"]),
        ({"LIVEFEED_DATABASE_URL": "mysql://x"}, ["LIVEFEED_DATABASE_URL", "postgresql://"]),
        ({"LIVEFEED_FEED_MAXLEN": "many"}, ["LIVEFEED_FEED_MAXLEN"]),
        ({"LIVEFEED_BATCH_SIZE": "0"}, ["LIVEFEED_BATCH_SIZE"]),
        ({"LIVEFEED_DEAD_MAXLEN": "0"}, ["LIVEFEED_DEAD_MAXLEN"]),
        ({"LIVEFEED_PREFIX": "a{b}"}, ["LIVEFEED_PREFIX"]),
        ({"LIVEFEED_REDIS_CLUSTER": "true"}, ["LIVEFEED_REDIS_URL"]),
    ],
)
def test_a_wrong_setting_is_named_with_its_fix(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(SettingsError) as info:
        settings_mod.load(env)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_signing_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    s = settings_mod.load({"LIVEFEED_DATA_DIR": str(tmp_path)})
    first = signing_secret(s)
    assert len(first) >= 32
    assert signing_secret(settings_mod.load({"LIVEFEED_DATA_DIR": str(tmp_path)})) == first
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    assert signing_secret(settings_mod.load({"LIVEFEED_SECRET": "given"})) == "given"


def test_resolve_fills_unset_urls_and_keeps_configured_ones() -> None:
    s = settings_mod.load({"LIVEFEED_REDIS_URL": "redis://own:6379/0", "LIVEFEED_PREFIX": "p"})
    r = s.resolve(redis_url="redis://embedded:1/0", database_url="postgresql://embedded/db")
    assert isinstance(r, Resolved) and isinstance(r, settings_mod.Settings)
    assert (r.redis_url, r.database_url, r.prefix) == (
        "redis://own:6379/0", "postgresql://embedded/db", "p")
    assert r.resolve() == r and repr(r).startswith("Resolved(")
    with pytest.raises(SettingsError, match="LIVEFEED_DATABASE_URL"):
        s.resolve()
    with pytest.raises(SettingsError, match="LIVEFEED_DATABASE_URL"):
        s.resolve(database_url="mysql://x")  # what is filled in is validated too


def test_token_settings(tmp_path: Path) -> None:
    s = settings_mod.load({})
    assert (s.auth_timeout_s, s.token_grace_s, s.keepalive_s) == (10.0, 10.0, 15.0)
    assert (s.signature_tolerance_s, s.allow_untimed_signatures) == (300, False)
    assert previous_secret(s) is None
    s = settings_mod.load({"LIVEFEED_AUTH_TIMEOUT": "2.5", "LIVEFEED_TOKEN_GRACE": "0",
                           "LIVEFEED_KEEPALIVE": "1", "LIVEFEED_SIGNATURE_TOLERANCE": "60",
                           "LIVEFEED_ALLOW_UNTIMED_SIGNATURES": "true",
                           "LIVEFEED_SECRET": "now",
                           "LIVEFEED_SIGNING_SECRET_PREVIOUS": "before-42"})
    assert (s.auth_timeout_s, s.token_grace_s, s.keepalive_s) == (2.5, 0.0, 1.0)
    assert (s.signature_tolerance_s, s.allow_untimed_signatures) == (60, True)
    assert "before-42" not in repr(s)
    assert (signing_secret(s), previous_secret(s)) == ("now", "before-42")
    path = tmp_path / "previous"
    path.write_text("from-a-file\n")
    s = settings_mod.load({"LIVEFEED_SECRET": "now",
                           "LIVEFEED_SIGNING_SECRET_PREVIOUS_FILE": str(path)})
    assert (signing_secret(s), previous_secret(s)) == ("now", "from-a-file")
    with pytest.raises(SettingsError, match="LIVEFEED_SIGNING_SECRET_PREVIOUS_FILE"):
        previous_secret(settings_mod.load({
            "LIVEFEED_SIGNING_SECRET_PREVIOUS_FILE": str(tmp_path / "absent")}))
    for env, name in (({"LIVEFEED_KEEPALIVE": "0"}, "LIVEFEED_KEEPALIVE"),
                      ({"LIVEFEED_AUTH_TIMEOUT": "-1"}, "LIVEFEED_AUTH_TIMEOUT"),
                      ({"LIVEFEED_TOKEN_GRACE": "-1"}, "LIVEFEED_TOKEN_GRACE"),
                      ({"LIVEFEED_SIGNING_SECRET_PREVIOUS": "a",
                        "LIVEFEED_SIGNING_SECRET_PREVIOUS_FILE": "b"},
                       "LIVEFEED_SIGNING_SECRET_PREVIOUS")):
        with pytest.raises(SettingsError, match=name):
            settings_mod.load(env)


def test_hub_linger_setting() -> None:
    assert settings_mod.load({}).hub_linger_s == 5.0
    assert settings_mod.load({"LIVEFEED_HUB_LINGER": "0"}).hub_linger_s == 0.0
    assert settings_mod.load({"LIVEFEED_HUB_LINGER": "0.5"}).hub_linger_s == 0.5
    with pytest.raises(SettingsError, match="LIVEFEED_HUB_LINGER must be 0 or more"):
        settings_mod.load({"LIVEFEED_HUB_LINGER": "-1"})

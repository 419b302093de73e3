"""Tokens name only user ids that ingest accepts (`valid_user_id`)."""

from __future__ import annotations

import time

import jwt
import pytest

from livefeed.core import auth
from livefeed.ops.cli import build_parser


def test_tokens_carry_only_valid_user_ids() -> None:
    secret = "s" * 40
    with pytest.raises(ValueError, match="user id"):
        auth.mint(secret, "alice\n")
    assert auth.verify(secret, auth.mint(secret, "alice")).user == "alice"
    # A token signed elsewhere (or before this rule) with a bad subject is refused.
    forged = jwt.encode({"sub": "alice\n", "exp": time.time() + 60}, secret, algorithm="HS256")
    with pytest.raises(auth.InvalidToken, match="user id"):
        auth.verify(secret, forged)


@pytest.mark.parametrize("argv", [["token", "alice\n"], ["send", "--user", "al ice"]])
def test_the_cli_refuses_a_bad_user_id(argv: list[str], capsys: pytest.CaptureFixture[str],
                                       ) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "not a valid user id" in capsys.readouterr().err


def test_a_previous_secret_verifies_during_rotation() -> None:
    current, previous, other = "c" * 40, "p" * 40, "o" * 40
    old = auth.mint(previous, "alice", admin=True)
    claims = auth.verify((current, previous), old)
    assert (claims.user, claims.admin) == ("alice", True) and claims.exp > time.time()
    assert auth.verify((current, previous), auth.mint(current, "bob")).user == "bob"
    for secrets in (current, (current,)):
        with pytest.raises(auth.InvalidToken, match="Signature"):
            auth.verify(secrets, old)
    with pytest.raises(auth.InvalidToken, match="Signature"):
        auth.verify((current, previous), auth.mint(other, "alice"))
    # Expiry is not a reason to try the next secret: it is reported as such.
    with pytest.raises(auth.InvalidToken, match="expired"):
        auth.verify((current, previous), auth.mint(previous, "alice", ttl_s=-10))


def test_a_verifier_remembers_tokens_that_verified_until_they_expire(
        monkeypatch: pytest.MonkeyPatch) -> None:
    current, previous = "c" * 40, "p" * 40
    decoded: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: object, **kwargs: object) -> object:
        decoded.append(token)
        return decode(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", counting)
    verify = auth.Verifier((current, previous), size=2)
    alice, bob, carol = (auth.mint(previous, u, ttl_s=60) for u in ("alice", "bob", "carol"))
    assert verify(alice) == verify(alice) == auth.verify(previous, alice)
    assert decoded.count(alice) == 3  # twice here (current, then previous), once for ==
    decoded.clear()
    # Refusals are not remembered: checked (and refused) each time.
    forged = auth.mint("f" * 40, "alice")
    for _ in range(2):
        with pytest.raises(auth.InvalidToken, match="Signature"):
            verify(forged)
        with pytest.raises(auth.InvalidToken, match="missing"):
            verify(None)
    assert decoded == [forged] * 4
    # At most `size` tokens: the oldest goes first.
    verify(bob)
    verify(carol)
    decoded.clear()
    verify(carol)
    verify(bob)
    assert decoded == []
    verify(alice)
    assert decoded == [alice, alice]
    # Once its exp has passed (by the verifier's clock), a remembered token is checked anew
    # (and PyJWT, on its own clock, refuses it when it has expired: the test above).
    decoded.clear()
    verify(alice)
    assert decoded == []
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    verify(alice)
    assert decoded == [alice, alice]


def test_timestamped_signatures() -> None:
    body, now = b'{"x": 1}', 1_700_000_000
    headers = auth.signature_headers("k", body, now)
    sig, ts = headers[auth.SIGNATURE_HEADER], headers[auth.TIMESTAMP_HEADER]
    assert sig.startswith("v1=") and ts == str(now)
    assert auth.check_signature("k", body, sig, ts, now=now + 300) is None
    assert auth.check_signature("k", body, sig, ts, now=now - 300) is None
    assert "timestamp" in (auth.check_signature("k", body, sig, ts, now=now + 301) or "")
    assert "timestamp" in (auth.check_signature("k", body, sig, ts, now=now - 301) or "")
    assert auth.check_signature("k", body, sig, ts, now=now + 60, tolerance_s=30)
    assert auth.check_signature("other", body, sig, ts, now=now)
    assert auth.check_signature("k", body + b" ", sig, ts, now=now)
    assert auth.check_signature("k", body, sig, str(now + 1), now=now)
    untimed = auth.untimed_signature("k", body)
    assert "untimed" in (auth.check_signature("k", body, untimed, None, now=now) or "")
    assert auth.check_signature("k", body, untimed, None, allow_untimed=True) is None
    assert auth.check_signature("k", b"{}", untimed, None, allow_untimed=True)
    assert auth.check_signature("k", body, None, ts, now=now)

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

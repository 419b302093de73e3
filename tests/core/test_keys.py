from __future__ import annotations

import pytest

from livefeed.core.keys import Keys


def test_names_follow_the_contract() -> None:
    k = Keys("lf")
    assert k.ingest == "lf:ingest"
    assert k.dead == "lf:dead"
    assert k.feed("alice") == "lf:feed:{alice}"
    assert k.live("alice") == "lf:live:{alice}"
    assert k.seen("alice", "e1") == "lf:seen:{alice}:e1"
    assert k.fanned("alice", "e1") == "lf:fanned:{alice}:e1"


def test_cluster_mode_colocates_the_ingest_side() -> None:
    k = Keys("lf", cluster=True)
    # one hash tag for the ingest script's keys, the user's tag for per-user keys
    assert k.ingest == "{lf}:ingest" and k.dead == "{lf}:dead"
    assert k.seen("bob", "e1") == "{lf}:seen:{bob}:e1"
    assert k.feed("bob") == "lf:feed:{bob}"


def test_inverse_of_live_and_feed() -> None:
    k = Keys("p")
    assert k.user_of_live(k.live("a.b:c-d")) == "a.b:c-d"
    assert k.user_of_feed(k.feed("u1").encode()) == "u1"
    with pytest.raises(ValueError):
        k.user_of_live("q:live:{x}")


def test_prefix_must_not_break_hash_tags() -> None:
    with pytest.raises(ValueError):
        Keys("a{b")

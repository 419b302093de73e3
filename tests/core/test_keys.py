from __future__ import annotations

import pytest
from redis.crc import key_slot

from livefeed.core.keys import Keys


def test_names_follow_the_contract() -> None:
    k = Keys("lf", partitions=16)
    p = k.partition_of("alice")
    tag = k.partitions.tags[p]
    assert k.ingest_of("alice") == k.ingest(p) == f"lf:{{{tag}}}:ingest"
    assert k.dead(p) == f"lf:{{{tag}}}:dead"
    assert k.feed("alice") == f"lf:{{{tag}}}:feed:alice"
    assert k.live("alice") == f"lf:{{{tag}}}:live:alice"
    assert k.seen("alice", "e1") == f"lf:{{{tag}}}:seen:alice:e1"
    assert k.fanned("alice", "e1") == f"lf:{{{tag}}}:fanned:alice:e1"
    assert k.lease(p, "persist") == f"lf:{{{tag}}}:lease:persist"
    assert k.presence("alice") == f"lf:{{{tag}}}:presence:alice"
    assert k.members("fanout") == "lf:members:fanout"
    assert len(k.ingests) == len(k.deads) == 16


def test_a_users_keys_share_its_partitions_slot() -> None:
    k = Keys("lf", partitions=16)
    for user in ("alice", "bob", "x.y:z-1"):
        p = k.partition_of(user)
        names = [k.ingest(p), k.dead(p), k.lease(p, "g"), k.seen(user, "e"), k.feed(user),
                 k.live(user), k.fanned(user, "e"), k.presence(user)]
        assert len({key_slot(n.encode()) for n in names}) == 1


def test_inverse_of_names() -> None:
    k = Keys("p")
    assert k.user_of_live(k.live("a.b:c-d")) == "a.b:c-d"
    assert k.user_of_feed(k.feed("u1").encode()) == "u1"
    assert k.partition_of_key(k.ingest(5)) == 5
    for bad in ("q:live:{x}", "p:{0.13}:live:alice", Keys("q").live("x"), k.feed("x")):
        with pytest.raises(ValueError):
            k.user_of_live(bad)


def test_list_mode_names_are_under_the_prefix() -> None:
    """`list` mode (the article's design): the user's channel and the one write buffer."""
    keys = Keys("tp")
    assert keys.newsletters_channel("u:1") == "tp:user:u:1:newsletters"
    assert keys.write_buffer == "tp:newsletter-buffer"
    (pattern,) = keys.patterns()  # what tests and `compare` delete covers them
    assert keys.write_buffer.startswith(pattern.rstrip("*"))
    assert keys.newsletters_channel("x").startswith(pattern.rstrip("*"))


def test_prefix_must_not_break_hash_tags() -> None:
    with pytest.raises(ValueError):
        Keys("a{b")


def test_cluster_urls_list_startup_nodes() -> None:
    from livefeed.core.redis_client import cluster_nodes

    assert cluster_nodes("redis://a:7000,b:7001/0") == [("a", 7000), ("b", 7001)]
    assert cluster_nodes("redis://user:pw@h1:7000,h2") == [("h1", 7000), ("h2", 6379)]
    assert cluster_nodes("redis://myhost") == [("myhost", 6379)]
    assert cluster_nodes("redis://[::1]:7000") == [("::1", 7000)]

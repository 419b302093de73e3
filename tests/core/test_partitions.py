from __future__ import annotations

import collections

import pytest
from redis.crc import key_slot

from livefeed.core.partitions import Partitioner, jump_hash, slot_range, user_key


def test_frozen_values() -> None:
    # These name keys in every deployment: a change here is a silent data migration.
    p = Partitioner(16)
    assert [p.of(u) for u in ("alice", "bob", "carol", "demo", "u-1")] == [1, 13, 9, 7, 2]
    assert p.tags[:4] == ("0.13", "1.10", "2.3", "3.0")
    assert user_key("alice") == 5614559425216174729


def test_jump_hash_matches_the_reference_values() -> None:
    assert [jump_hash(k, 1) for k in range(5)] == [0] * 5
    assert [jump_hash(k, 100) for k in (1, 2, 3, 0xDEADBEEF)] == [55, 62, 8, 87]
    assert all(0 <= jump_hash(k, 7) < 7 for k in range(1000))


def test_growing_moves_about_one_in_n() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    a, b = Partitioner(16), Partitioner(17)
    moved = sum(a.of(u) != b.of(u) for u in users)
    assert 0.03 < moved / len(users) < 0.09  # 1/17 = 0.059
    assert all(b.of(u) == 16 for u in users if a.of(u) != b.of(u))


@pytest.mark.parametrize("n", [1, 3, 16, 64, 256])
def test_tags_land_in_evenly_spaced_slot_slices(n: int) -> None:
    p = Partitioner(n)
    assert len(set(p.tags)) == n
    for i, tag in enumerate(p.tags):
        assert key_slot(tag.encode()) in slot_range(i, n)
        assert key_slot(f"lf:{{{tag}}}:ingest".encode()) == key_slot(tag.encode())


def test_three_even_primaries_get_equal_shares() -> None:
    # A cluster whose 16384 slots are split evenly over 3 primaries.
    p = Partitioner(48)
    nodes = collections.Counter(key_slot(t.encode()) * 3 // 16384 for t in p.tags)
    assert sorted(nodes.values()) == [16, 16, 16]


def test_users_spread_over_partitions() -> None:
    p = Partitioner(16)
    counts = collections.Counter(p.of(f"u{i}") for i in range(32_000))
    assert len(counts) == 16 and min(counts.values()) > 1700 and max(counts.values()) < 2300


def test_bounds() -> None:
    for bad in (0, -1, 257):
        with pytest.raises(ValueError, match="partitions must be"):
            Partitioner(bad)

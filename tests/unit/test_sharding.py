"""Stable sharding across daemons and rendezvous assignment across connections."""

from __future__ import annotations

from collector_daemon.sharding import assign, shard_of


def test_shards_partition_the_universe_evenly_and_stably() -> None:
    names = [f"ETH-27DEC30-{1000 + i}-{'CP'[i % 2]}" for i in range(4000)]
    owners = [shard_of(n, 4) for n in names]
    assert set(owners) == {1, 2, 3, 4}
    assert all(800 < owners.count(k) < 1200 for k in (1, 2, 3, 4))
    assert owners == [shard_of(n, 4) for n in names]          # same answer every time
    assert shard_of("ETH-9APR21-1950-C", 4) == shard_of("ETH-9APR21-1950-C", 4)


def test_rendezvous_moves_only_what_must_move() -> None:
    channels = [f"ticker.ETH-27DEC30-{1000 + i}-C.100ms" for i in range(3000)]
    three = assign(channels, [0, 1, 2])
    assert sorted(sum(three.values(), [])) == sorted(channels)
    assert all(800 < len(v) < 1200 for v in three.values())
    # connection 1 fails: only its channels move, the others keep theirs
    two = assign(channels, [0, 2])
    assert set(three[0]) <= set(two[0]) and set(three[2]) <= set(two[2])
    assert set(two[0]) | set(two[2]) == set(channels)
    # a fourth connection takes about a quarter, from every other connection, moving nothing else
    four = assign(channels, [0, 1, 2, 3])
    for i in (0, 1, 2):
        assert set(four[i]) <= set(three[i])
    assert 600 < len(four[3]) < 900

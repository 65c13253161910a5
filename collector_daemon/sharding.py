"""How the subscription set is split: across daemons (``--shard k/n``), across the worker
processes of one daemon (``--workers N``) and across the connections of one process.

Both use stable hashes (BLAKE2b of the name, never Python's salted ``hash``), so every daemon and
every restart agrees. Connections use rendezvous (highest-random-weight) hashing: when a
connection is added, fails over or comes back, only the channels that must move do; the rest stay
where they are, uninterrupted.
"""

from __future__ import annotations

import hashlib


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def shard_of(instrument_name: str, shards: int) -> int:
    """The shard (1..``shards``) that owns an instrument."""
    return _h(instrument_name) % shards + 1


def worker_shard(shard: tuple[int, int], worker: int, workers: int) -> tuple[int, int]:
    """The shard ``(k', n')`` that worker ``worker`` (1..``workers``) of a daemon owning shard
    ``(k, n)`` collects: ``k' = k + n·(worker − 1)`` of ``n' = n·workers``.

    Since ``shard_of(name, n·N) = h % (n·N) + 1`` and ``h % (n·N) ≡ h (mod n)``, the N worker
    shards are disjoint and together exactly the daemon's shard: no second mechanism, the
    daemon-level sharding refined N ways.

    Raises:
        ValueError: ``worker`` not in 1..``workers``, or ``shard`` not 1 <= k <= n.
    """
    k, n = shard
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: needs 1 <= k <= n")
    if not 1 <= worker <= workers:
        raise ValueError(f"worker {worker} of {workers}: needs 1 <= worker <= workers")
    return k + n * (worker - 1), n * workers


def assign(channels: list[str], connections: list[int]) -> dict[int, list[str]]:
    """Spread ``channels`` over the given connection indices (rendezvous hashing); the order of
    ``channels`` is kept within each connection. Every index gets an entry (maybe empty).

    Raises:
        ValueError: no connection to assign to.
    """
    if not connections:
        raise ValueError("no connection to assign channels to")
    out: dict[int, list[str]] = {i: [] for i in connections}
    for channel in channels:
        owner = max(connections, key=lambda i: _h(f"{channel}|{i}"))
        out[owner].append(channel)
    return out

"""How the subscription set is split: across daemons (``--shard k/n``) and across the
connections of one daemon.

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

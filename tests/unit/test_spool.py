"""The durable spool: round trip, order, checksum quarantine, cap, single owner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector_daemon.rows import CONNECTION_EVENTS, QUOTES, TRADES
from collector_daemon.storage.spool import Spool, SpoolLockedError


def _quote(i: int) -> tuple:
    return ("deribit", f"ETH-X-{i % 7}", 1_617_644_856_302_000 + i, 1_617_644_856_402_000 + i,
            0.1, 1.0, None, None, 0.12, 78.5, None, None, 2100.5, "ETH-9APR21", 2103.4,
            3963.0, 0.06, 0.86, 0.0013, 0.465, -5.09, 0.16, 0.0, "open")


def _drain(spool: Spool) -> list[tuple[str, list[tuple]]]:
    got: list[tuple[str, list[tuple]]] = []

    async def write(table, rows):
        got.append((table.name, rows))
        return len(rows)

    asyncio.run(spool.drain(write))
    return got


def test_round_trip_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=4096)
    batches = [(QUOTES, [_quote(i * 10 + k) for k in range(10)]) for i in range(20)]
    batches.insert(5, (CONNECTION_EVENTS, [("deribit", "c0", "disconnect", 1, ["a", "b"], None, "x", 2, None)]))
    for table, rows in batches:
        assert spool.append(table, rows)
    assert len(spool.segments()) > 1 and spool
    got = _drain(spool)
    assert got == [(t.name, rows) for t, rows in batches]   # values exact, order kept
    assert not spool and spool.segments() == []


def test_survives_a_new_process_and_quarantines_corruption(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(TRADES, [("deribit", "ETH-X", "ETH-1", 7, 1, 2, 0.1, 1.0, "buy", 60.1, 0.1, 2000.0, 1, None, None, "ws")])
    spool.append(QUOTES, [_quote(1)])
    spool.append(QUOTES, [_quote(2)])
    spool.release()
    segment = next(tmp_path.glob("segment-*.spool"))
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF                      # flip a byte inside the last record's payload
    segment.write_bytes(bytes(data))
    reopened = Spool(tmp_path)
    got = _drain(reopened)
    assert [name for name, _ in got] == ["trades", "quotes"]
    assert got[1][1] == [_quote(1)]
    assert reopened.corrupt_records == 1 and len(list((tmp_path / "corrupt").iterdir())) == 1


def test_cap_refuses_instead_of_growing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=3000)
    accepted = sum(spool.append(QUOTES, [_quote(i) for i in range(5)]) for _ in range(10))
    assert 0 < accepted < 10 and spool.size_bytes <= 3000


def test_one_owner_per_directory(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    with pytest.raises(SpoolLockedError, match="TICKVAULT_SPOOL_DIR"):
        Spool(tmp_path)
    first.release()
    Spool(tmp_path).release()

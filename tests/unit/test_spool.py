"""The durable spool: round trip, order, checksum quarantine and resynchronisation, cap (and the
gap rows allowed past it), resumed drains, single owner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector_daemon.rows import CONNECTION_EVENTS, DATA_GAPS, QUOTES, TRADES
from collector_daemon.storage.spool import MAGIC, Spool, SpoolLockedError


def _quote(i: int) -> tuple:
    return ("deribit", f"ETH-X-{i % 7}", 1_617_644_856_302_000 + i, 1_617_644_856_402_000 + i,
            0.1, 1.0, None, None, 0.12, 78.5, None, None, 2100.5, "ETH-9APR21", 2103.4,
            3963.0, 0.06, 0.86, 0.0013, 0.465, -5.09, 0.16, 0.0, "open")


def _drain(spool: Spool, fail_at: int | None = None) -> list[tuple[str, list[tuple]]]:
    """Drain through a callback recording what it is given; ``fail_at``: the n-th call (0-based)
    raises ConnectionError instead (the database went away mid-drain)."""
    got: list[tuple[str, list[tuple]]] = []
    calls = 0

    async def write(table, rows):
        nonlocal calls
        calls += 1
        if calls - 1 == fail_at:
            raise ConnectionError("database went away")
        got.append((table.name, rows))
        return len(rows)

    try:
        asyncio.run(spool.drain(write))
    except ConnectionError:
        pass
    return got


def _three_records(directory: Path) -> tuple[Path, list[int]]:
    """A spool of three one-quote records; returns its segment and the record start offsets."""
    spool = Spool(directory)
    for i in range(3):
        spool.append(QUOTES, [_quote(i)])
    spool.release()
    segment = next(directory.glob("segment-*.spool"))
    data = segment.read_bytes()
    starts = [i for i in range(len(data)) if data.startswith(MAGIC, i)]
    assert len(starts) == 3
    return segment, starts


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
    spool.append(TRADES, [("deribit", "ETH-X", "ETH-1", 7, 1, 2, 0.1, 1.0, "buy", 60.1, 0.1, 2000.0, 1, None, None, "ws", None)])
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


@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_corrupt_record_is_quarantined_and_the_next_ones_replayed(where: str, tmp_path: Path) -> None:
    segment, starts = _three_records(tmp_path)
    data = bytearray(segment.read_bytes())
    if where == "payload":
        data[starts[2] - 3] ^= 0xFF                # inside the middle record's payload
    else:
        data[starts[1] + 4:starts[1] + 8] = (10**6).to_bytes(4, "little")   # its length field
    segment.write_bytes(bytes(data))
    spool = Spool(tmp_path)
    got = _drain(spool)
    assert got == [("quotes", [_quote(0)]), ("quotes", [_quote(2)])]    # the third is not lost
    assert spool.corrupt_records == 1 and spool.corrupt_bytes == starts[2] - starts[1]
    quarantined = list((tmp_path / "corrupt").iterdir())
    assert [q.name for q in quarantined] == [f"{segment.name}.{starts[1]}-{starts[2]}"]
    assert quarantined[0].read_bytes() == bytes(data[starts[1]:starts[2]])
    assert not spool and spool.segments() == []


def test_a_retried_drain_resumes_after_the_last_record_written(tmp_path: Path) -> None:
    segment, starts = _three_records(tmp_path)
    data = bytearray(segment.read_bytes())
    data[starts[1] + 1] ^= 0xFF                    # a corrupt second record (bad magic)
    segment.write_bytes(bytes(data))
    spool = Spool(tmp_path)
    assert _drain(spool, fail_at=1) == [("quotes", [_quote(0)])]   # the third record's write fails
    assert spool and spool.corrupt_records == 1
    assert _drain(spool) == [("quotes", [_quote(2)])]   # not the first again, nor a 2nd quarantine
    assert spool.corrupt_records == 1 and len(list((tmp_path / "corrupt").iterdir())) == 1


def test_gap_rows_are_accepted_past_the_cap_and_survive(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=3000)
    while spool.append(QUOTES, [_quote(i) for i in range(5)]):
        pass
    full = spool.size_bytes
    gap = ("deribit", "quotes", "*", 1, 2, None, None, "spool_full", "unrecoverable",
           "spool full: 5 rows dropped")
    assert spool.append(DATA_GAPS, [gap], over_cap=True)
    assert not spool.append(QUOTES, [_quote(9)]) and spool.size_bytes > full
    assert spool.size_bytes == sum(p.stat().st_size for p in spool.segments())
    spool.release()
    reopened = Spool(tmp_path)
    assert reopened.size_bytes == spool.size_bytes
    got = _drain(reopened)
    assert got[-1] == ("data_gaps", [gap]) and reopened.size_bytes == 0

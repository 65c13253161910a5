"""Migrations and the batch writer against real PostgreSQL: TimescaleDB and plain."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from collector_daemon.pipeline import Pipeline
from collector_daemon.rows import CONNECTION_EVENTS, QUOTES, TRADES
from collector_daemon.storage.migrate import migrate
from collector_daemon.storage.writer import BatchWriter

T0_US = 1_617_644_856_302_000  # 2021-04-05 17:47:36.302 UTC


def _quote(i: int, name: str = "ETH-9APR21-1950-C") -> tuple:
    return ("deribit", name, T0_US + i * 1000, T0_US + i * 1000 + 250, 0.0795, 4.0, 0.0945, 5.0,
            0.084155, 78.74, 51.06, 117.97, 2115.89, "ETH-9APR21", 2103.4, 3963.0, 0.06,
            0.8609, 0.00134, 0.46511, -5.09811, 0.16173, 0.0, "open")


def _trade(i: int, **over) -> tuple:
    row = dict(zip(TRADES.columns, (
        "deribit", "ETH-9APR21-1950-C", f"ETH-{1000 + i}", 100 + i, T0_US + i * 1000,
        T0_US + i * 1000 + 300, 0.08, 1.0, "buy", 78.4, 0.0841, 2103.4, 0, None, None, "ws", None)))
    row.update(over)
    return tuple(row[c] for c in TRADES.columns)


@pytest.mark.parametrize("flavour", ["timescaledb", "plain"])
def test_migrations_apply_twice(flavour: str, db_url: str, plain_db_url: str) -> None:
    dsn = db_url if flavour == "timescaledb" else plain_db_url
    first = migrate(dsn)
    assert first.applied[:3] == ["0001.core", "0002.timescaledb", "0003.timescale_licensed"]
    assert first.applied == sorted(first.applied)
    assert migrate(dsn).applied == []
    if flavour == "timescaledb":
        assert first.timescaledb_version and first.timescaledb_license == "apache"
        assert {"quotes", "trades"} <= set(first.hypertables)
        with psycopg.connect(dsn) as conn:
            interval = conn.execute(
                "SELECT time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_name = 'quotes'").fetchone()[0]
        assert interval.days == 1
    else:
        assert first.timescaledb_version is None and first.hypertables == []


async def _write_all(dsn: str, batches: list[tuple]) -> BatchWriter:
    writer = BatchWriter(dsn, venue="deribit")
    await writer.open()
    try:
        for table, rows in batches:
            await writer.write(table, rows)
    finally:
        await writer.close()
    return writer


def test_writer_is_insert_if_absent_and_exact(migrated_db_url: str) -> None:
    quotes = [_quote(i) for i in range(500)]
    trades = [_trade(i) for i in range(50)]
    w1 = asyncio.run(_write_all(migrated_db_url, [(QUOTES, quotes), (TRADES, trades)]))
    assert w1.rows_written == {"quotes": 500, "trades": 50}
    # the same rows again, mixed with new ones and with in-batch duplicates: only new rows land
    again = quotes[::2] + [_quote(i) for i in range(500, 600)] + [_quote(600)] * 3
    w2 = asyncio.run(_write_all(migrated_db_url, [(QUOTES, again), (TRADES, trades)]))
    assert w2.rows_written == {"quotes": 101, "trades": 0}
    assert w2.rows_duplicate == {"quotes": 250 + 2, "trades": 50}
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM quotes").fetchone()[0] == 601
        row = conn.execute(
            "SELECT " + ", ".join(QUOTES.columns[4:]) + ", (extract(epoch FROM exchange_ts) * 1e6)::bigint, "
            "(extract(epoch FROM receive_ts) * 1e6)::bigint FROM quotes ORDER BY exchange_ts LIMIT 1").fetchone()
        assert tuple(row[:-2]) == _quote(0)[4:]
        assert row[-2:] == (T0_US, T0_US + 250)
        assert conn.execute("SELECT count(*), count(DISTINCT trade_id) FROM trades").fetchone() == (50, 50)


def test_writer_isolates_rows_the_database_refuses(migrated_db_url: str) -> None:
    trades = [_trade(i) for i in range(100)]
    trades[37] = _trade(37, direction="sideways")        # check constraint
    trades[80] = _trade(80, liquidation="M\x00T")         # NUL is not valid in PostgreSQL text
    writer = asyncio.run(_write_all(migrated_db_url, [(TRADES, trades)]))
    assert writer.rows_written["trades"] == 98 and writer.rows_refused == 2
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 98
        reasons = [r[0] for r in conn.execute("SELECT reason FROM rejected_messages ORDER BY rejected_id")]
    assert len(reasons) == 2 and all(r.startswith("database refused trades row") for r in reasons)


def test_pipeline_backpressure_and_complete_flush(migrated_plain_db_url: str) -> None:
    async def scenario() -> tuple[int, int, int]:
        writer = BatchWriter(migrated_plain_db_url, venue="deribit")
        await writer.open()
        pipeline = Pipeline(writer.write, batch_rows=100, flush_interval_s=0.05, queue_batches=2)
        pipeline.start()
        for i in range(5_000):
            if pipeline.add(QUOTES, [_quote(i)]):
                await pipeline.seal(QUOTES)
            assert pipeline.queue_depth <= 2
        pipeline.add(CONNECTION_EVENTS, [("deribit", "c0", "connect", T0_US, None, None, None, None, None)])
        await pipeline.close()
        await writer.close()
        return writer.rows_written["quotes"], pipeline.backpressure_waits, pipeline.rows_pending

    written, waits, pending = asyncio.run(scenario())
    assert written == 5_000 and pending == 0
    assert waits > 0  # the reader was made to wait instead of queueing without bound
    with psycopg.connect(migrated_plain_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM quotes").fetchone()[0] == 5_000
        assert conn.execute("SELECT event FROM connection_events").fetchone()[0] == "connect"

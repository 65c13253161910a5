"""The spool, the gap keeper and the writer under database faults, against a real TimescaleDB
(a server of the test's own, stopped, restarted or frozen with SIGSTOP) and real captured quotes:

* a gap found while the database is down is kept and stored when it is back; the gap task lives;
* gaps still pending at shutdown with the database down go to the spool and land next start;
* batches dropped at the spool cap stay on record (in the spool, past its cap) across a crash
  or a shutdown with the database down, and land in ``data_gaps`` with their exact bounds;
* a database that hangs (SIGSTOP, not refusing) is spooled to within the write timeout, the
  stuck connection is terminated, and every row lands once after it resumes;
* replaying a spool whose rows were already committed stores no row twice, in any table.

The spool metrics are read over HTTP from ``/metrics`` as Prometheus scrapes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from collector_daemon.gaps import GapKeeper
from collector_daemon.metrics import MetricsServer, Stats
from collector_daemon.pipeline import Pipeline
from collector_daemon.rows import CONNECTION_EVENTS, DATA_GAPS, QUOTES, REJECTED_MESSAGES
from collector_daemon.storage.localdb import LocalPostgres
from collector_daemon.storage.spool import Spool
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues.deribit.protocol import DeribitProtocol
from replay_helpers import CAPTURE

pytestmark = pytest.mark.realdata

DAY_US = 86_400_000_000
GAP_SQL = ("SELECT stream, instrument_name, (extract(epoch FROM gap_start) * 1e6)::bigint, "
           "(extract(epoch FROM gap_end) * 1e6)::bigint, detected_by, status, reason FROM data_gaps "
           "ORDER BY gap_start, stream")


def capture_quotes(real: Path, loops: int = 1) -> list[tuple]:
    """The ETH ticker frames of the real capture decoded by the collector's own parser (273
    rows), ``loops`` times, each copy shifted by a day so every row has its own key."""
    protocol, rows = DeribitProtocol(("ETH",)), []
    with gzip.open(real / CAPTURE, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "recv" and rec["raw"].startswith('{"jsonrpc":"2.0","method":"subscription"'):
                with contextlib.suppress(Exception):
                    data = protocol.decode(rec["raw"], int(rec["ts"] * 1e6))
                    if data.table is QUOTES:
                        rows += data.rows
    ts, rx = QUOTES.columns.index("exchange_ts"), QUOTES.columns.index("receive_ts")
    return [tuple(v + k * DAY_US if i in (ts, rx) else v for i, v in enumerate(row))
            for k in range(loops) for row in rows]


def query(dsn: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


@contextlib.contextmanager
def frozen(server: LocalPostgres) -> Iterator[None]:
    """The server hangs: SIGSTOP to the postmaster and its backends (connections are still
    accepted by the kernel, nothing answers); SIGCONT on exit."""
    postmaster = psutil.Process(int((server.pgdata / "postmaster.pid").read_text().split()[0]))
    procs = [postmaster, *postmaster.children(recursive=True)]
    for proc in procs:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def metrics_of(pipeline: Pipeline) -> Iterator[callable]:
    """``scrape()`` -> {metric name: value} of the collector's /metrics wired to ``pipeline``."""
    stats = Stats(venue="deribit", spool=pipeline.spool_stats)
    server = MetricsServer(stats, lambda: (True, {}), port=0)
    server.start()

    def scrape() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
        return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("tickvault_") and '{venue="deribit"}' in line}
    try:
        yield scrape
    finally:
        server.stop()


async def wait_for(condition, timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` is true (AssertionError naming ``what`` after ``timeout_s``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def feed(pipeline: Pipeline, table, rows: list[tuple]) -> None:
    """Add rows as a reader does (sealing full buffers), then seal the rest."""
    for row in rows:
        if pipeline.add(table, [row]):
            await pipeline.seal(table)
    await pipeline.seal_all()


async def drain_leftover_spool(dsn: str, directory: Path) -> Pipeline:
    """A new run: open the spool left in ``directory``, drain it before anything else, stop."""
    writer = BatchWriter(dsn, venue="deribit")
    await writer.open()
    pipeline = Pipeline(writer.write, spool=Spool(directory), drain_backoff_s=(0.1, 0.5))
    pipeline.start()
    await wait_for(lambda: not pipeline.spooling, 30, "spool drained")
    await pipeline.close()
    await writer.close()
    return pipeline


# 1 ----------------------------------------------------------------------------------------------
def test_gap_found_while_database_is_down_lands_when_it_is_back(own_pg, figures):
    server, dsn = own_pg
    t0 = 1_617_644_856_302_000

    async def main():
        writer = BatchWriter(dsn, venue="deribit")
        await writer.open()
        recovered: list[int] = []

        async def recover(ids: list[int]) -> None:
            recovered.extend(ids)

        gaps = GapKeeper("deribit", writer.pool, recover, retry_backoff_s=(0.1, 0.5))
        task = gaps.start()
        server.stop()
        gaps.lost_window("deribit-eth-0", t0, t0 + 2_500_000)
        await wait_for(lambda: gaps.store_failures >= 2, 10, "retries while the database is down")
        assert not task.done() and gaps.pending == 2
        server.start()
        landed_s = await wait_for(lambda: gaps.pending == 0, 20, "pending gaps stored")
        assert not task.done()
        gaps.lost_window("deribit-eth-0", t0 + 9_000_000, t0 + 9_500_000, ("quotes",))
        await wait_for(lambda: gaps.pending == 0, 10, "a later gap stored")
        assert not task.done() and gaps.gaps_recorded == 3
        await gaps.close()
        await writer.close()
        return recovered, landed_s

    recovered, landed_s = asyncio.run(main())
    rows = query(dsn, GAP_SQL)
    assert [r[:6] for r in rows] == [
        ("quotes", "*", t0, t0 + 2_500_000, "disconnect", "unrecoverable"),
        ("trades", "*", t0, t0 + 2_500_000, "disconnect", "open"),
        ("quotes", "*", t0 + 9_000_000, t0 + 9_500_000, "disconnect", "unrecoverable")]
    assert recovered == [r[0] for r in query(dsn, "SELECT gap_id FROM data_gaps WHERE stream = 'trades'")]
    figures.update(landed_after_restart_s=round(landed_s, 2))


@pytest.mark.parametrize("failures, delays, running, total, status", [
    (2, (0.2, 0.4), 3, 3, "backfilled"),   # tried again after 0.2 s and 0.4 s: the 3rd try works
    (5, (0.2, 0.4), 3, 3, "open"),         # 3 failures use up the delays: left open for Dagster
    (1, (30.0,), 1, 2, "backfilled"),      # a try still waiting at close is made at once
])
def test_a_gap_whose_recovery_failed_is_tried_again(migrated_db_url, failures, delays, running,
                                                    total, status):
    """REST failing past the client's own retries leaves a gap open: the keeper tries it again
    after each of ``recovery_retry_delays_s`` in turn, and makes a try still waiting at close."""
    t0 = 1_617_644_856_302_000
    calls: list[tuple[float, list[int]]] = []

    async def main():
        writer = BatchWriter(migrated_db_url, venue="deribit")
        await writer.open()

        async def recover(ids: list[int]) -> list[int]:
            calls.append((time.monotonic(), list(ids)))
            if len(calls) <= failures:
                return ids                              # REST failed: still open
            async with writer.pool.acquire() as conn:
                await conn.execute("UPDATE data_gaps SET status = 'backfilled' "
                                   "WHERE gap_id = ANY($1::bigint[])", ids)
            return []

        gaps = GapKeeper("deribit", writer.pool, recover, recovery_retry_delays_s=delays)
        gaps.start()
        gaps.lost_window("deribit-btc-0", t0, t0 + 1_000_000, ("trades",))
        await wait_for(lambda: len(calls) >= running, 10, "recovery tries")
        await asyncio.sleep(0.6)                        # nothing more before close
        tries_running = len(calls)
        await gaps.close()
        await writer.close()
        return tries_running

    tries_running = asyncio.run(main())
    (gap_id, stored_status), = query(migrated_db_url, "SELECT gap_id, status FROM data_gaps")
    assert all(ids == [gap_id] for _, ids in calls)
    assert (tries_running, len(calls), stored_status) == (running, total, status)
    waits = [b - a for (a, _), (b, _) in zip(calls[:running], calls[1:running])]
    assert all(w >= d for w, d in zip(waits, delays)), waits


def test_gaps_pending_at_shutdown_with_database_down_land_at_next_start(own_pg, tmp_path):
    server, dsn = own_pg
    t0 = 1_617_644_856_302_000

    async def first_run():
        writer = BatchWriter(dsn, venue="deribit")
        await writer.open()
        spool = Spool(tmp_path / "spool")
        gaps = GapKeeper("deribit", writer.pool, spool=spool, retry_backoff_s=(0.1, 0.5))
        gaps.start()
        server.stop()
        gaps.lost_window("deribit-eth-0", t0, t0 + 1_000_000)
        await gaps.close()                       # cannot store them: they go to the spool
        assert gaps.pending == 0 and spool
        spool.release()
        await writer.close()

    asyncio.run(first_run())
    server.start()
    drained = asyncio.run(drain_leftover_spool(dsn, tmp_path / "spool"))
    assert drained.rows_drained == 2
    assert [r[:6] for r in query(dsn, GAP_SQL)] == [
        ("quotes", "*", t0, t0 + 1_000_000, "disconnect", "unrecoverable"),
        ("trades", "*", t0, t0 + 1_000_000, "disconnect", "open")]


# 2 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("end", ["crash", "shutdown"])
def test_batches_dropped_at_the_spool_cap_stay_recorded(end, own_pg, tmp_path, real_data_dir, figures):
    """The database is down and the spool fills: the batches dropped become spool_full gaps that
    survive the process (a crash: nothing closed; or a shutdown with the database still down)
    and land when the next run drains the spool."""
    server, dsn = own_pg
    quotes = capture_quotes(real_data_dir)

    async def first_run():
        writer = BatchWriter(dsn, venue="deribit")
        await writer.open()
        pipeline = Pipeline(writer.write, batch_rows=30, flush_interval_s=0.05, queue_batches=2,
                            spool=Spool(tmp_path / "spool", max_bytes=30_000), drain_backoff_s=(0.1, 0.5))
        pipeline.start()
        server.stop()
        with metrics_of(pipeline) as scrape:
            await feed(pipeline, QUOTES, quotes)
            await wait_for(lambda: pipeline.rows_pending == 0, 20, "every batch spooled or dropped")
            seen = scrape()
        assert pipeline.rows_dropped > 0 and pipeline.rows_spooled > 0
        assert pipeline.rows_dropped + pipeline.rows_spooled == len(quotes)
        assert seen["tickvault_spool_dropped_rows_total"] == pipeline.rows_dropped
        assert seen["tickvault_spooled_rows_total"] == pipeline.rows_spooled
        assert seen["tickvault_spooled_batches_total"] == pipeline.batches_spooled > 0
        assert seen["tickvault_spool_bytes"] == pipeline.spool.size_bytes > 0
        assert seen["tickvault_spooling"] == 1
        if end == "shutdown":
            await pipeline.close(drain_timeout_s=0.5)
        else:   # what SIGKILL leaves: the files, nothing closed (asyncio.run cancels the tasks)
            pipeline.spool.release()           # the kernel drops a dead process's lock
        writer.pool.terminate()
        return pipeline.rows_spooled, pipeline.rows_dropped

    spooled, dropped = asyncio.run(first_run())
    server.start()
    asyncio.run(drain_leftover_spool(dsn, tmp_path / "spool"))
    stored = set(query(dsn, "SELECT instrument_name, (extract(epoch FROM exchange_ts) * 1e6)::bigint "
                            "FROM quotes"))
    (n,), = query(dsn, "SELECT count(*) FROM quotes")
    assert n == len(stored) == spooled
    gaps = query(dsn, GAP_SQL)
    assert gaps and all(g[0] == "quotes" and g[4] == "spool_full" and g[5] == "unrecoverable" for g in gaps)
    assert sum(int(g[6].split()[2]) for g in gaps) == dropped          # "spool full: N rows dropped"
    missing = [row[2] for row in quotes if (row[1], row[2]) not in stored]
    assert len(missing) == dropped
    assert all(any(g[2] <= ts <= g[3] for g in gaps) for ts in missing)  # each lost row inside a gap
    figures.update(rows=len(quotes), spooled=spooled, dropped=dropped, gap_rows=len(gaps))


# 4 ----------------------------------------------------------------------------------------------
def test_hung_database_is_spooled_within_the_write_timeout(own_pg, tmp_path, real_data_dir, figures):
    server, dsn = own_pg
    quotes = capture_quotes(real_data_dir, loops=2)
    event = ("deribit", "deribit-eth-0", "connect", quotes[0][3], None, None, None, None, None)
    timeout_s = 2.0

    async def main():
        writer = BatchWriter(dsn, venue="deribit", write_timeout_s=timeout_s)
        await writer.open()
        async with writer.pool.acquire() as conn:
            stuck_pid = await conn.fetchval("SELECT pg_backend_pid()")   # the pool's one connection
        pipeline = Pipeline(writer.write, batch_rows=100, flush_interval_s=0.05, queue_batches=2,
                            spool=Spool(tmp_path / "spool"), drain_backoff_s=(0.2, 1.0))
        pipeline.start()
        with metrics_of(pipeline) as scrape:
            with frozen(server):
                started = time.monotonic()
                await feed(pipeline, CONNECTION_EVENTS, [event])
                await feed(pipeline, QUOTES, quotes)
                reader_held_s = time.monotonic() - started
                spooled_s = await wait_for(lambda: pipeline.rows_pending == 0, 3 * timeout_s,
                                           "every batch spooled") + reader_held_s
                assert pipeline.spooling and pipeline.rows_spooled == len(quotes) + 1
                during = scrape()
                await asyncio.sleep(1.0)         # the drainer's attempts time out too
            drain_s = await wait_for(lambda: not pipeline.spooling, 30, "spool drained after SIGCONT")
            after = scrape()
        await pipeline.close()
        await writer.close()
        return stuck_pid, reader_held_s, spooled_s, drain_s, during, after, pipeline

    stuck_pid, held_s, spooled_s, drain_s, during, after, pipeline = asyncio.run(main())
    assert spooled_s <= timeout_s + 1.5, spooled_s
    assert during["tickvault_spooled_rows_total"] == len(quotes) + 1 and during["tickvault_spool_bytes"] > 0
    assert after["tickvault_spool_bytes"] == 0 and after["tickvault_spooling"] == 0
    assert after["tickvault_spool_drained_rows_total"] == pipeline.rows_drained == len(quotes) + 1
    (n, distinct), = query(dsn, "SELECT count(*), count(DISTINCT (instrument_name, exchange_ts)) FROM quotes")
    assert n == distinct == len(quotes)
    assert query(dsn, "SELECT count(*) FROM connection_events") == [(1,)]
    deadline = time.monotonic() + 10        # the connection stuck in the COPY was terminated
    while query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", stuck_pid) != [(0,)]:
        assert time.monotonic() < deadline, "the timed-out connection is still open"
        time.sleep(0.1)
    figures.update(write_timeout_s=timeout_s, reader_held_s=round(held_s, 2),
                   all_spooled_s=round(spooled_s, 2), drained_after_resume_s=round(drain_s, 2), rows=n)


# 5 ----------------------------------------------------------------------------------------------
def test_replaying_an_already_written_spool_stores_every_row_once(migrated_db_url, tmp_path, real_data_dir):
    """A segment left by a crash after its rows were committed (or drained part-way and
    retried) is replayed: no table gets a row twice; identical rows inside one batch stay."""
    quotes = capture_quotes(real_data_dir)[:50]
    t0 = quotes[0][3]
    batches = [
        (QUOTES, quotes),
        (CONNECTION_EVENTS, [("deribit", "deribit-eth-0", "connect", t0, None, None, None, None, None),
                             ("deribit", "deribit-eth-0", "subscribed", t0 + 1, ["ticker.a", "ticker.b"],
                              [], None, t0 - 5, t0 + 1)]),
        (REJECTED_MESSAGES, [(t0 + 2, "deribit", "deribit-eth-0", "decode error", "{bad", 4)] * 2),
        (DATA_GAPS, [("deribit", "trades", "*", t0 - 5, t0 + 1, None, None, "disconnect", "open",
                      "deribit-eth-0 disconnected")]),
    ]

    async def main():
        writer = BatchWriter(migrated_db_url, venue="deribit")
        await writer.open()
        replay = functools.partial(writer.write, retry=False, replay=True)
        for attempt in range(2):
            spool = Spool(tmp_path / "spool")
            for table, rows in batches:
                spool.append(table, rows)
            await spool.drain(replay)
            spool.release()
            if attempt == 0:   # the recovery resolves the gap in between, as it does
                async with writer.pool.acquire() as conn:
                    await conn.execute("UPDATE data_gaps SET status = 'backfilled', "
                                       "reason = reason || ' | backfill: 3 trades'")
        await writer.close()
        return writer

    writer = asyncio.run(main())
    assert query(migrated_db_url, "SELECT (SELECT count(*) FROM quotes), (SELECT count(*) FROM "
                 "connection_events), (SELECT count(*) FROM rejected_messages), (SELECT count(*) "
                 "FROM data_gaps)") == [(50, 2, 2, 1)]
    assert writer.rows_duplicate == {"quotes": 50, "connection_events": 2, "rejected_messages": 2,
                                     "data_gaps": 1}

"""Benchmark of ``tickvault import kraken-trades``: a 10-million-row time-and-sales CSV into a
private TimescaleDB (rows/s, peak RSS of the importing process).

Run (not part of CI; a few minutes on 2 cores)::

    .venv/bin/python benchmarks/import_kraken.py [--rows 10000000] [--keep-file PATH]
        [--loops-per-span N] [--connections N]
    .venv/bin/python benchmarks/import_kraken.py --ceiling     # the database alone, 1, 2 and 3 connections

The file is derived from real data: the 1,000 real trades of Kraken's ``GET /0/public/Trades``
(../shared/data/real/kraken/nautilus_test_data/http_trades.json, 2025-11-10 17:23 - 2025-11-11
00:13 UTC) written in Kraken's classic time-and-sales layout ``time,price,volume`` (no header,
the time with the response's own digits), looped: loop ``i`` is the 1,000 rows shifted ``i``
periods back in time (period = the rows' span rounded up to whole seconds + 1 s; only the whole
seconds change, the fractions stay real), written oldest loop first so the file is in time order
as Kraken's are. ``--loops-per-span N`` shifts the loops by 1/N of the period instead, so N
loops overlap and are merged in time order: N times denser days (every row is still a real
trade's price, volume and sub-second time). Looping repeats prices and volumes, which does not
matter to an importer (it parses, validates and COPYs every row alike).

**Density.** The sample has ~3,500 trades per UTC day; a real Kraken file of the same length is
much denser, and the density sets how many daily chunks of the ``trades`` hypertable the import
creates (~4 ms each). By default ``N`` is taken from the real daily trade counts of Kraken's
XBTUSD OHLCVT file (../shared/data/real/kraken/kraken_OHLCVT_download_XBTUSD_1440_daily_*.csv,
column ``trades``): the newest ``--rows`` trades of XBTUSD span D days (10M: 316 days,
2023-02-19..12-31, ~31,600 per day), and ``N`` = that density / the sample's, rounded (10M: 9,
so ~320 chunks, as the real file's tail would create). ``--loops-per-span 1`` is the sparse
variant of earlier runs (10M rows reach back to 2018, ~2,850 chunks).

What it reports: wall time and rows/s of the whole import (read, parse, validate, derive ids,
binary COPY into the ``trades`` hypertable, commit per chunk), the importer process's peak RSS
(``VmHWM`` of a spawned child that does only the import), and a second run of the same file
(every row already present: the staging path). The importer's CPU time next to the wall time
shows how long it waited for the database; the load average says how busy the machine was.
"""

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import psutil
import psycopg

from collector_daemon.storage.localdb import LocalPostgres
from collector_daemon.storage.migrate import migrate
from tickvault.history.kraken_csv import WRITE_CONNECTIONS
from tickvault.history.sources import CHUNK_BYTES

REPO = Path(__file__).resolve().parents[1]
KRAKEN = REPO.parent / "shared" / "data" / "real" / "kraken"
TRADES_JSON = KRAKEN / "nautilus_test_data" / "http_trades.json"
OHLCVT_DAILY = KRAKEN / "kraken_OHLCVT_download_XBTUSD_1440_daily_2013-10-06_to_2023-12-31.csv"


def real_loops_per_span(rows: int) -> tuple[int, int, float]:
    """(loops per span, days, trades per day): the density of the newest ``rows`` trades of the
    real XBTUSD file, from the daily ``trades`` counts of its OHLCVT file, over the sample's."""
    counts = pl.read_csv(OHLCVT_DAILY, has_header=False)[:, 6].cast(pl.Int64).reverse()
    days = int((counts.cum_sum() < rows).sum()) + 1
    per_day = rows / days
    trades = json.loads(TRADES_JSON.read_text())["result"]["XBTUSDT"]
    sample_per_day = len(trades) / ((float(trades[-1][2]) - float(trades[0][2])) / 86_400)
    return max(1, round(per_day / sample_per_day)), days, per_day


def write_file(path: Path, rows: int, loops_per_span: int = 1) -> int:
    """Write the looped time-and-sales file; returns the rows written. Loop ``i`` is shifted
    ``i * ceil(period / loops_per_span)`` whole seconds back; with ``loops_per_span`` > 1 the
    loops overlap in time and the rows are merged in time order (denser days, fewer chunks)."""
    trades = json.loads(TRADES_JSON.read_text())["result"]["XBTUSDT"]
    base = pl.DataFrame({"time": [repr(t[2]) for t in trades], "price": [t[0] for t in trades],
                         "volume": [t[1] for t in trades]})
    base = base.with_columns(whole=pl.col("time").str.extract(r"^(\d+)", 1).cast(pl.Int64),
                             frac=pl.col("time").str.extract(r"(\.\d+)$", 1).fill_null(""))
    period = int(float(trades[-1][2]) - float(trades[0][2])) + 2
    step = -(-period // loops_per_span)
    loops = -(-rows // len(trades))
    frames = [base.with_columns(whole=pl.col("whole") - i * step) for i in range(loops - 1, -1, -1)]
    df = pl.concat(frames).head(rows)
    if loops_per_span > 1:
        df = df.sort("whole", pl.col("frac").str.pad_end(10, "0"), maintain_order=True)
    with path.open("wb") as fh:
        df.select(pl.concat_str([pl.col("whole").cast(pl.String), "frac"]).alias("time"),
                  "price", "volume").write_csv(fh, include_header=False)
    return df.height


def import_child(dsn: str, path: str, connections: int, chunk_bytes: int, out) -> None:
    """The import in a fresh process, so its peak RSS is the importer's alone."""
    from tickvault.history.kraken_csv import import_trades
    start = time.perf_counter()
    summary = import_trades(dsn, path, symbol="BTC/USD", rejects_path=Path(path + ".rejects.csv"),
                            connections=connections, chunk_bytes=chunk_bytes)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put({"summary": summary.line(), "rows": summary.rows_read, "inserted": summary.inserted,
             "present": summary.already_present, "rejected": summary.rejected, "seconds": seconds,
             "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": peak_rss_mib()})


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux keeps that across fork + exec,
    so a spawned child would report the parent's peak (the file generator's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def postgres_cpu_s(db: LocalPostgres) -> float:
    """CPU seconds (user + system) the private server has used so far: the postmaster, its live
    processes and the backends it has already reaped (a finished connection's CPU is in the
    postmaster's ``children_*`` times)."""
    postmaster = psutil.Process(int((db.pgdata / "postmaster.pid").read_text().split()[0]))
    own = postmaster.cpu_times()
    total = own.user + own.system + own.children_user + own.children_system
    for child in postmaster.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_import(dsn: str, path: Path, db: LocalPostgres, connections: int, chunk_bytes: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    pg_before = postgres_cpu_s(db)
    child = ctx.Process(target=import_child, args=(dsn, str(path), connections, chunk_bytes, queue))
    child.start()
    result = queue.get()
    child.join()
    result["postgres_cpu_s"] = postgres_cpu_s(db) - pg_before
    return result


def database_ceiling(path: Path, db: LocalPostgres, connections: tuple[int, ...]) -> list[dict]:
    """The database alone: the importer's batches for ``path`` built in memory first (not
    timed), then written by ``n`` connections (batch i on connection i mod n, each batch one
    transaction, as the importer does) into a fresh migrated database, for each ``n``. Wall,
    rows/s, PostgreSQL CPU per row and the client's CPU per row for the binary COPY (ADBC's
    Arrow -> COPY encoding): what no importer can beat on this machine."""
    from tickvault.history import kraken_csv
    from tickvault.history.sources import RejectsFile
    summary = kraken_csv.ImportSummary("kraken-trades")
    plans = kraken_csv._plans(path, "trades", "BTC/USD", None, None)
    rejects = RejectsFile(path.with_suffix(".ceiling-rejects.csv"))
    batches = [b for b, _ in kraken_csv._batches("trades", plans, summary, rejects,
                                                  time.time_ns() // 1000, kraken_csv.CHUNK_BYTES)]
    rows = sum(b.num_rows for b in batches)
    out = []
    for n in connections:
        dsn = db.create_database(f"ceiling_{n}")
        migrate(dsn)
        writers = [kraken_csv._writer(dsn, "trades") for _ in range(n)]
        pg_before = postgres_cpu_s(db)
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:
            inserted = sum(pool.map(lambda w: sum(w[0].write(b) for b in batches[w[1]::n]),
                                    [(writer, i) for i, writer in enumerate(writers)]))
        seconds = time.perf_counter() - start
        pg_cpu = postgres_cpu_s(db) - pg_before
        own = resource.getrusage(resource.RUSAGE_SELF)
        copy_cpu = (own.ru_utime + own.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
        for writer in writers:
            writer.close()
        assert inserted == rows, (inserted, rows)
        out.append({"connections": n, "rows": rows, "seconds": round(seconds, 1),
                    "rows_per_s": round(rows / seconds),
                    "postgres_cpu_us_per_row": round(pg_cpu / rows * 1e6, 2),
                    "copy_client_cpu_us_per_row": round(copy_cpu / rows * 1e6, 2)})
        print(f"ceiling, {n} connection(s): {out[-1]}", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the generated file")
    parser.add_argument("--keep-file", type=Path, help="write the file here and keep it")
    parser.add_argument("--loops-per-span", type=int,
                        help="loops overlapping in time (1 = back to back: the sample's density, "
                             "~3,500 trades per day; N = N times denser days; default: the real "
                             "XBTUSD file's density, see the module docstring)")
    parser.add_argument("--connections", type=int, default=WRITE_CONNECTIONS,
                        help="the importer's write connections (import_trades(connections=), "
                             f"default {WRITE_CONNECTIONS})")
    parser.add_argument("--chunk-mib", type=int, default=CHUNK_BYTES // 2**20,
                        help=f"MiB of CSV per chunk (import_trades(chunk_bytes=), default "
                             f"{CHUNK_BYTES // 2**20})")
    parser.add_argument("--ceiling", action="store_true",
                        help="instead of the import: the database alone, 1, 2 and 3 connections "
                             "writing the importer's batches prepared in memory")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting of the benchmark's PostgreSQL (repeatable), e.g. "
                             "shared_buffers=2GB")
    args = parser.parse_args()
    if args.loops_per_span is None:
        args.loops_per_span, real_days, per_day = real_loops_per_span(args.rows)
        print(f"density: the newest {args.rows:,} XBTUSD trades span {real_days} days "
              f"({per_day:,.0f} per day): --loops-per-span {args.loops_per_span}", file=sys.stderr)

    base = Path(tempfile.mkdtemp(prefix="tickvault-bench-import-"))
    base.chmod(0o755)
    path = args.keep_file or base / "XBTUSD.csv"
    settings = dict(item.split("=", 1) for item in args.pg_setting)
    db = LocalPostgres(base / "pg", durable=False, settings=settings)
    try:
        t0 = time.perf_counter()
        written = write_file(path, args.rows, args.loops_per_span)
        file_mb = path.stat().st_size / 1e6
        print(f"wrote {written:,} rows ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        db.start()
        if args.ceiling:
            print(json.dumps({"date": datetime.now(UTC).strftime("%Y-%m-%d"),
                              "loops_per_span": args.loops_per_span,
                              "ceiling": database_ceiling(path, db, (1, 2, 3))}, indent=2))
            return 0
        dsn = db.create_database("bench")
        migrate(dsn)
        timescaledb = db.timescaledb_loaded
        load_before = os.getloadavg()
        first = run_import(dsn, path, db, args.connections, args.chunk_mib * 2**20)
        with psycopg.connect(dsn) as conn:
            days = conn.execute("SELECT count(DISTINCT (exchange_ts AT TIME ZONE 'UTC')::date) "
                                "FROM trades").fetchone()[0]
        print(first["summary"], file=sys.stderr)
        again = run_import(dsn, path, db, args.connections, args.chunk_mib * 2**20)
        print(again["summary"], file=sys.stderr)
    finally:
        db.stop()
        if args.keep_file is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            shutil.rmtree(base / "pg", ignore_errors=True)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "timescaledb": timescaledb,
        "rows": first["rows"],
        "loops_per_span": args.loops_per_span,
        "connections": args.connections,
        "chunk_mib": args.chunk_mib,
        "trade_days": days,
        "file_mb": round(file_mb),
        "load_average_1m_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "import_s": round(first["seconds"], 1),
        "import_rows_per_s": round(first["rows"] / first["seconds"]),
        "inserted": first["inserted"],
        "rejected": first["rejected"],
        "peak_rss_mib": round(first["peak_rss_mib"]),
        "importer_cpu_s": round(first["cpu_s"], 1),
        "importer_cpu_us_per_row": round(first["cpu_s"] / first["rows"] * 1e6, 2),
        "postgres_cpu_s": round(first["postgres_cpu_s"], 1),
        "postgres_cpu_us_per_row": round(first["postgres_cpu_s"] / first["rows"] * 1e6, 2),
        "reimport_s": round(again["seconds"], 1),
        "reimport_rows_per_s": round(again["rows"] / again["seconds"]),
        "reimport_inserted": again["inserted"],
        "reimport_already_present": again["present"],
        "reimport_peak_rss_mib": round(again["peak_rss_mib"]),
        "reimport_postgres_cpu_us_per_row": round(again["postgres_cpu_s"] / again["rows"] * 1e6, 2),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

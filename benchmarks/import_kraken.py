"""Benchmark of ``tickvault import kraken-trades``: a 10-million-row time-and-sales CSV into a
private TimescaleDB (rows/s, peak RSS of the importing process).

Run (not part of CI; a few minutes on 2 cores)::

    .venv/bin/python benchmarks/import_kraken.py [--rows 10000000] [--keep-file PATH]

The file is derived from real data: the 1,000 real trades of Kraken's ``GET /0/public/Trades``
(../shared/data/real/kraken/nautilus_test_data/http_trades.json, 2025-11-10 17:23 - 2025-11-11
00:13 UTC) written in Kraken's classic time-and-sales layout ``time,price,volume`` (no header,
the time with the response's own digits), looped: loop ``i`` is the 1,000 rows shifted ``i``
periods back in time (period = the rows' span rounded up to whole seconds + 1 s; only the whole
seconds change, the fractions stay real), written oldest loop first so the file is in time order
as Kraken's are. 10,000 loops reach back to 2018. Looping repeats prices and volumes, which does
not matter to an importer (it parses, validates and COPYs every row alike).

What it reports: wall time and rows/s of the whole import (read, parse, validate, derive ids,
binary COPY into the ``trades`` hypertable, commit per chunk), the importer process's peak RSS
(``ru_maxrss`` of a spawned child that does only the import), and a second run of the same file
(every row already present: the staging path).
"""

import argparse
import json
import multiprocessing
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from collector_daemon.storage.localdb import LocalPostgres
from collector_daemon.storage.migrate import migrate

REPO = Path(__file__).resolve().parents[1]
TRADES_JSON = REPO.parent / "shared" / "data" / "real" / "kraken" / "nautilus_test_data" / "http_trades.json"


def write_file(path: Path, rows: int) -> int:
    """Write the looped time-and-sales file; returns the rows written."""
    trades = json.loads(TRADES_JSON.read_text())["result"]["XBTUSDT"]
    base = pl.DataFrame({"time": [repr(t[2]) for t in trades], "price": [t[0] for t in trades],
                         "volume": [t[1] for t in trades]})
    base = base.with_columns(whole=pl.col("time").str.extract(r"^(\d+)", 1).cast(pl.Int64),
                             frac=pl.col("time").str.extract(r"(\.\d+)$", 1).fill_null(""))
    period = int(float(trades[-1][2]) - float(trades[0][2])) + 2
    loops = -(-rows // len(trades))
    written = 0
    with path.open("wb") as fh:
        for first in range(loops - 1, -1, -100):     # 100 loops per write, oldest first
            block = [base.with_columns(whole=pl.col("whole") - i * period)
                     for i in range(first, max(first - 100, -1), -1)]
            df = pl.concat(block).head(rows - written)
            df.select(pl.concat_str([pl.col("whole").cast(pl.String), "frac"]).alias("time"),
                      "price", "volume").write_csv(fh, include_header=False)
            written += df.height
    return written


def import_child(dsn: str, path: str, out) -> None:
    """The import in a fresh process, so its peak RSS is the importer's alone."""
    from tickvault.history.kraken_csv import import_trades
    start = time.perf_counter()
    summary = import_trades(dsn, path, symbol="BTC/USD", rejects_path=Path(path + ".rejects.csv"))
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put({"summary": summary.line(), "rows": summary.rows_read, "inserted": summary.inserted,
             "present": summary.already_present, "rejected": summary.rejected, "seconds": seconds,
             "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024})


def run_import(dsn: str, path: Path) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=import_child, args=(dsn, str(path), queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the generated file")
    parser.add_argument("--keep-file", type=Path, help="write the file here and keep it")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="tickvault-bench-import-"))
    base.chmod(0o755)
    path = args.keep_file or base / "XBTUSD.csv"
    db = LocalPostgres(base / "pg", durable=False)
    try:
        t0 = time.perf_counter()
        written = write_file(path, args.rows)
        print(f"wrote {written:,} rows ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        db.start()
        dsn = db.create_database("bench")
        migrate(dsn)
        timescaledb = db.timescaledb_loaded
        first = run_import(dsn, path)
        print(first["summary"], file=sys.stderr)
        again = run_import(dsn, path)
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
        "file_mb": round(path.stat().st_size / 1e6) if path.exists() else None,
        "import_s": round(first["seconds"], 1),
        "import_rows_per_s": round(first["rows"] / first["seconds"]),
        "inserted": first["inserted"],
        "rejected": first["rejected"],
        "peak_rss_mib": round(first["peak_rss_mib"]),
        "importer_cpu_s": round(first["cpu_s"], 1),
        "reimport_s": round(again["seconds"], 1),
        "reimport_rows_per_s": round(again["rows"] / again["seconds"]),
        "reimport_inserted": again["inserted"],
        "reimport_already_present": again["present"],
        "reimport_peak_rss_mib": round(again["peak_rss_mib"]),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the nightly Parquet export: one day of quotes (10M rows by default) from a private
TimescaleDB to a private S3 server (moto, over loopback HTTP), then its verification.

Run (not part of CI; ~5 minutes on 2 cores, most of it generating the rows)::

    .venv/bin/python benchmarks/export.py [--rows 10000000] [--chunk-rows 500000]

What it does:

1. Starts its own PostgreSQL (``collector_daemon.storage.localdb.LocalPostgres`` in a temp
   directory; TimescaleDB when installed) and applies the migrations; starts ``moto_server`` as a
   subprocess on a free loopback port.
2. Decodes the real 2021-04-05 Deribit ticker capture with the collector's protocol (273 quotes,
   10 instruments, 119 s), copies those rows into a seed table, and expands them on the server:
   720 time-shifted loops cover the day (00:00 .. 23:59:59 UTC of 2026-01-05), and each group of
   10 instruments is re-keyed (strike + 5 per group) until ``--rows`` is reached. Every value comes
   from a real row; looping makes the data more repetitive than a real day (see the caveat in
   docs/benchmarks.md).
3. Measures the database read ceiling (the day streamed by ADBC, nothing else), then runs
   ``export_table_day`` + ``verify_export`` in a child process and reports wall time, rows/s,
   the child's peak RSS, object sizes and bytes per million rows.
"""

import argparse
import gzip
import json
import multiprocessing
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3
import psycopg

from collector_daemon.rows import QUOTES
from collector_daemon.storage.localdb import LocalPostgres
from collector_daemon.storage.migrate import migrate
from collector_daemon.venues import Data
from collector_daemon.venues.deribit.protocol import DeribitProtocol

REPO = Path(__file__).resolve().parents[1]
CAPTURE = (REPO.parent / "shared" / "data" / "real" / "deribit"
           / "cryptofeed_2021-04-05_options_ticker_book_ws.jsonl.gz")
DAY = date(2026, 1, 5)
LOOPS = 720  # 120 s apart: the capture spans 119 s
BUCKET = "tickvault-bench"


def capture_quotes(path: Path) -> list[tuple]:
    """The capture's ticker notifications as ``quotes`` rows, via the collector's decoder."""
    proto = DeribitProtocol("ETH")
    rows = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["dir"] == "recv" and rec["raw"] and '"ticker.' in rec["raw"]:
                item = proto.decode(rec["raw"], int(rec["ts"] * 1_000_000))
                if isinstance(item, Data) and item.table is QUOTES:
                    rows += item.rows
    return rows


def load_day(dsn: str, seed: list[tuple], rows: int) -> int:
    """Expand the seed rows into about ``rows`` quotes on ``DAY``; returns the rows loaded."""
    groups = max(1, round(rows / (LOOPS * len(seed))))
    ts = QUOTES.columns.index("exchange_ts"), QUOTES.columns.index("receive_ts")
    first = min(r[ts[0]] for r in seed)
    cols = ", ".join(QUOTES.columns)
    select = []
    for c in QUOTES.columns:
        if c == "instrument_name":  # ETH-16APR21-1400-P -> ETH-16APR21-<1400 + 5g>-P
            select.append("(regexp_match(s.instrument_name, '^(.*)-\\d+-[CP]$'))[1] || '-' || "
                          "((regexp_match(s.instrument_name, '-(\\d+)-[CP]$'))[1]::int + 5 * g)"
                          " || '-' || right(s.instrument_name, 1)")
        elif c in ("exchange_ts", "receive_ts"):
            select.append(f"s.{c} + make_interval(secs => %(shift)s + l * 120)")
        else:
            select.append(f"s.{c}")
    shift = (datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp() - first / 1e6)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE seed (LIKE quotes)")
        with conn.cursor().copy(f"COPY seed ({cols}) FROM STDIN") as copy:
            for r in seed:
                copy.write_row([datetime.fromtimestamp(v / 1e6, UTC) if i in ts else v
                                for i, v in enumerate(r)])
        conn.execute(f"INSERT INTO quotes ({cols}) SELECT {', '.join(select)} FROM seed s, "
                     f"generate_series(0, {LOOPS - 1}) l, generate_series(0, %(g)s - 1) g "
                     "ORDER BY 3", {"shift": shift, "g": groups})
        conn.execute("VACUUM ANALYZE quotes")
        return conn.execute("SELECT count(*) FROM quotes").fetchone()[0]


def read_ceiling(dsn: str) -> float:
    """Seconds to stream the day's rows through ADBC (binary COPY) and drop them."""
    import adbc_driver_postgresql.dbapi as adbc
    start = time.perf_counter()
    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM quotes WHERE exchange_ts >= '{DAY}T00:00:00+00:00' "
                    f"AND exchange_ts < '{DAY + timedelta(days=1)}T00:00:00+00:00'")
        for _ in cur.fetch_record_batch():
            pass
    return time.perf_counter() - start


def export_child(dsn: str, endpoint: str, chunk_rows: int, out) -> None:
    """Export + verify in a fresh process, so its peak RSS is the export's alone."""
    from orchestration.lib.export import ExportSettings, S3Store, export_table_day, verify_export
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    store = S3Store(client, BUCKET)
    start = time.perf_counter()
    exports = export_table_day(dsn, store, "tickvault", "quotes", DAY,
                               ExportSettings(chunk_rows=chunk_rows))
    exported = time.perf_counter()
    outcomes = verify_export(dsn, store, "quotes", DAY, deep=True)
    verified = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put({
        "rows": sum(e.rows for e in exports), "bytes": sum(e.bytes for e in exports),
        "files": [f.key for e in exports for f in e.files],
        "export_s": exported - start, "verify_s": verified - exported,
        "checks_passed": all(o.passed for o in outcomes.values()),
        "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
    })


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="quotes to generate")
    parser.add_argument("--chunk-rows", type=int, default=500_000, help="ExportSettings.chunk_rows")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="tickvault-bench-export-"))
    base.chmod(0o755)
    db = LocalPostgres(base / "pg", durable=False)
    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                             "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        db.start()
        dsn = db.create_database("bench")
        migrate(dsn)
        timescaledb = db.timescaledb_loaded
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                             aws_access_key_id="bench", aws_secret_access_key="bench"
                             ).create_bucket(Bucket=BUCKET)
                break
            except Exception:  # the server is still starting
                time.sleep(0.2)
        t0 = time.perf_counter()
        loaded = load_day(dsn, capture_quotes(CAPTURE), args.rows)
        print(f"loaded {loaded:,} quotes for {DAY} in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        ceiling = read_ceiling(dsn)
        queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(
            target=export_child, args=(dsn, endpoint, args.chunk_rows, queue))
        child.start()
        result = queue.get()
        child.join()
    finally:
        moto.terminate()
        moto.wait()
        db.stop()
        shutil.rmtree(base, ignore_errors=True)
    rows = result["rows"]
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "timescaledb": timescaledb,
        "rows": rows,
        "chunk_rows": args.chunk_rows,
        "export_s": round(result["export_s"], 1),
        "export_rows_per_s": round(rows / result["export_s"]),
        "verify_deep_s": round(result["verify_s"], 1),
        "checks_passed": result["checks_passed"],
        "child_cpu_s": round(result["cpu_s"], 1),
        "peak_rss_mib": round(result["peak_rss_mib"]),
        "bytes": result["bytes"],
        "mb_per_million_rows": round(result["bytes"] / 1e6 / (rows / 1e6), 2),
        "files": len(result["files"]),
        "db_read_only_rows_per_s": round(rows / ceiling),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

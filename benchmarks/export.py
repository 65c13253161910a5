"""Benchmark of the nightly Parquet export: one day of quotes (10M rows by default) from a private
TimescaleDB to a private S3 server (moto, over loopback HTTP), then its verification.

Run (not part of CI; ~5 minutes on 2 cores, most of it generating the rows)::

    .venv/bin/python benchmarks/export.py [--rows 10000000] [--chunk-rows 500000]

    # against another version of the code, in the same run (the day loaded once):
    git worktree add /tmp/tv-main main   # or: git archive main | tar -x -C /tmp/tv-main
    .venv/bin/python benchmarks/export.py --rows 4000000 --rounds 3 --baseline /tmp/tv-main

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
3. Per round (``--rounds``): measures the database read ceiling (the day streamed by ADBC,
   nothing else), then runs ``export_table_day`` + ``verify_export`` in a child process (a
   fresh interpreter, so its peak RSS is the export's alone) and reports wall time, rows/s, the
   ratio to the round's read ceiling, the child's CPU and peak RSS, object sizes and bytes per
   million rows. With ``--baseline DIR`` the same round also runs the export with the code of
   ``DIR`` (another checkout of the repository, first on the child's ``PYTHONPATH``), in
   alternating order, so both are compared with the same ceiling under the same load.
4. With ``--profile``, after the rounds, each step of the export runs alone per code tree
   (:func:`profile_phases`): the count query, the bare read, read + routing into spill files,
   read-back + sort, Parquet encoding; wall and CPU seconds of each.
"""

import argparse
import gzip
import json
import multiprocessing
import os
import platform
import resource
import statistics
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


def export_child(dsn: str, endpoint: str, chunk_rows: int) -> dict:
    """Export + verify (run in a fresh interpreter, :func:`run_export`)."""
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
    return {
        "rows": sum(e.rows for e in exports), "bytes": sum(e.bytes for e in exports),
        "files": [f.key for e in exports for f in e.files],
        "export_s": exported - start, "verify_s": verified - exported,
        "checks_passed": all(o.passed for o in outcomes.values()),
        "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
    }


def profile_phases(dsn: str, endpoint: str, chunk_rows: int) -> dict:
    """Each step of the export run alone, one after the other, on the loaded day, in this
    process: wall and CPU seconds (user + system, every thread) of the count query (its wall is
    the server's work), the bare read (ADBC decode), read + routing into spill files (one pass),
    reading the spill files back and sorting them, and Parquet encoding (to /dev/null)."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.parquet as pq

    from orchestration.lib.export.layout import day_filter, start_of_day_us, table_layout
    from orchestration.lib.export.spill import DaySpill, sorted_range

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    phases: dict[str, dict[str, float]] = {}

    def add(name: str, wall: float, cpu_s: float) -> None:
        phase = phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
        phase["wall_s"] += wall
        phase["cpu_s"] += cpu_s

    def timed(name: str, fn):
        c0, t0 = cpu(), time.perf_counter()
        out = fn()
        add(name, time.perf_counter() - t0, cpu() - c0)
        return out

    with psycopg.connect(dsn) as conn:
        layout = table_layout(conn, "quotes")
        timed("count_query", lambda: conn.execute(
            f"SELECT venue, instrument_name, count(*) FROM quotes "
            f"WHERE {day_filter(layout, DAY)} GROUP BY 1, 2").fetchall())
    timed("read_only", lambda: read_ceiling(dsn))
    spill_dir = Path(tempfile.mkdtemp(prefix="tickvault-bench-profile-"))
    try:
        with adbc.connect(dsn) as conn:
            spill = DaySpill(conn, layout, DAY, chunk_rows, spill_dir, 1)
            c0, t0 = cpu(), time.perf_counter()
            spill.start()
            spill.ready(len(spill.ranges) - 1)
            add("read_route_spill", time.perf_counter() - t0, cpu() - c0)
            spill.close()
        schema = layout.schema_for("deribit", DAY)
        with pq.ParquetWriter("/dev/null", schema, compression="zstd", compression_level=3,
                              use_dictionary=True, write_statistics=True) as writer:
            for rng in spill.ranges:
                if rng.path is None:
                    continue
                c0, t0 = cpu(), time.perf_counter()
                table = sorted_range(layout, rng, start_of_day_us(DAY))
                if "venue" in table.column_names:  # code from before the venue was dropped there
                    table = table.drop_columns(["venue"])
                add("spill_read_back_sort", time.perf_counter() - t0, cpu() - c0)
                c0, t0 = cpu(), time.perf_counter()
                writer.write_table(table, row_group_size=max(table.num_rows, 1))
                add("parquet_encode", time.perf_counter() - t0, cpu() - c0)
                del table
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    route = phases["read_route_spill"]
    phases["route_spill_only"] = {k: route[k] - phases["read_only"][k] for k in route}
    return {name: {k: round(v, 2) for k, v in p.items()} for name, p in phases.items()}


#: What ``--child <mode>`` runs.
CHILD_MODES = {"export": export_child, "profile": profile_phases}


def run_child(mode: str, tree: Path, dsn: str, endpoint: str, chunk_rows: int) -> dict:
    """``CHILD_MODES[mode]`` in a fresh interpreter whose code comes from ``tree`` (a checkout
    of the repository): this script's ``--child`` mode with ``tree`` first on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, __file__, "--child", mode, dsn, endpoint,
                           str(chunk_rows)], env=env, cwd=tree, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def allow_both_manifest_keys(dsn: str) -> None:
    """Let a baseline from before schema/0013 (export_manifest keyed by (table_name, day,
    venue), ``ON CONFLICT (table_name, day, venue)``) write into this database too: a unique
    index on those columns, harmless here (the benchmark exports one public table)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS bench_export_manifest_venue_key "
                     "ON export_manifest (table_name, day, venue)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        mode, dsn, endpoint, chunk_rows = sys.argv[2:6]
        print(json.dumps(CHILD_MODES[mode](dsn, endpoint, int(chunk_rows))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="quotes to generate")
    parser.add_argument("--chunk-rows", type=int, default=500_000, help="ExportSettings.chunk_rows")
    parser.add_argument("--rounds", type=int, default=1, help="ceiling + export(s) per round")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of the repository to export with in each round")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, time each export step alone (per code tree)")
    args = parser.parse_args()
    trees = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}

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
        if args.baseline:
            allow_both_manifest_keys(dsn)
        rounds = []
        for n in range(args.rounds):
            ceiling = read_ceiling(dsn)
            order = list(trees) if n % 2 == 0 else list(reversed(trees))
            results = {name: run_child("export", trees[name], dsn, endpoint, args.chunk_rows)
                       for name in order}
            rounds.append((ceiling, results))
            print(f"round {n + 1}: ceiling {loaded / ceiling:,.0f} rows/s, " + ", ".join(
                f"{name} {r['rows'] / r['export_s']:,.0f} rows/s "
                f"({r['rows'] / r['export_s'] / (loaded / ceiling):.2f})"
                for name, r in results.items()), file=sys.stderr)
        profiles = {name: run_child("profile", tree, dsn, endpoint, args.chunk_rows)
                    for name, tree in trees.items()} if args.profile else {}
    finally:
        moto.terminate()
        moto.wait()
        db.stop()
        shutil.rmtree(base, ignore_errors=True)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, "
                   f"{platform.python_implementation()} {platform.python_version()}",
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "timescaledb": timescaledb,
        "chunk_rows": args.chunk_rows,
        "rounds": args.rounds,
        "db_read_only_rows_per_s": [round(loaded / c) for c, _ in rounds],
    }
    for name in trees:
        runs = [(c, r[name]) for c, r in rounds]
        rows = runs[0][1]["rows"]
        ratios = [rows / r["export_s"] / (loaded / c) for c, r in runs]
        report[name] = {
            "tree": str(trees[name]),
            "rows": rows,
            "export_s": [round(r["export_s"], 1) for _, r in runs],
            "export_rows_per_s": [round(rows / r["export_s"]) for _, r in runs],
            "ratio_to_read_ceiling": [round(x, 2) for x in ratios],
            "ratio_median": round(statistics.median(ratios), 2),
            "verify_deep_s": [round(r["verify_s"], 1) for _, r in runs],
            "checks_passed": all(r["checks_passed"] for _, r in runs),
            "child_cpu_s": [round(r["cpu_s"], 1) for _, r in runs],
            "peak_rss_mib": max(round(r["peak_rss_mib"]) for _, r in runs),
            "bytes": runs[-1][1]["bytes"],
            "mb_per_million_rows": round(runs[-1][1]["bytes"] / 1e6 / (rows / 1e6), 2),
            "files": len(runs[-1][1]["files"]),
            **({"profile": profiles[name]} if name in profiles else {}),
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

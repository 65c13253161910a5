"""tickvault against its peers, in the same run: the same emulator replay, the same fresh
TimescaleDB, the same machine, one after the other, interleaved over ``--runs`` runs.

Run by hand (not part of CI; about 10 minutes with the defaults)::

    .venv/bin/python benchmarks/peers.py                              # 3 arms x 2 runs, 1M notifications
    .venv/bin/python benchmarks/peers.py --arms tickvault,seed --runs 3 --messages 500000

The arms:

1. ``tickvault``: ``python -m collector_daemon.cli collect`` with its default settings (only the
   endpoints, currency, TOP_N=all, a private spool and no metrics port are set);
2. ``seed``: the seed design rebuilt from its description (:mod:`seed_design`: websockets,
   ``json.loads`` per frame, a dict per quote, asyncpg ``executemany`` of 10,000-row batches with
   ``ON CONFLICT DO NOTHING`` into an 8-column quotes table);
3. ``cryptofeed``: the current PyPI release, its Deribit feed (ticker and trades, which it
   subscribes as authenticated ``raw`` channels) and its own Postgres backend into the tables of
   its ``examples/postgres_tables.sql``, pointed at the emulator by a subclass that only replaces
   the endpoint URLs (:mod:`peers_cryptofeed`). It runs in its own virtualenv ``.venv-peers``
   (created here with ``python -m venv`` + ``pip install cryptofeed[postgres]`` when missing:
   cryptofeed pins websockets, aiohttp and yapic.json versions of its own; it installs on this
   Python 3.11 from PyPI wheels and one sdist build, no other Python needed).

Every arm gets the same workload (:func:`ingest.plan`: the real 2021-04-05 Deribit capture, ETH
options fanned out to about 1,000 instruments, looped to ``--messages`` ticker notifications), a
new emulator process serving ``wss://`` with a CA generated at start (``emulate --tls``; every
client is given the CA file through ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE``: cryptofeed refuses
``ws://``, so all three read TLS, as from the exchange), the emulator's fast path (``--fast``:
later loops sent from pre-rendered frames), and a new database in one PostgreSQL + TimescaleDB
server (``LocalPostgres``, durable, ``track_commit_timestamp=on``).

Measured per run (as in benchmarks/ingest.py): rows/s = rows stored / (last commit - replay
start), the last commit read from PostgreSQL (``pg_xact_commit_timestamp``); CPU s of the client
process (and its children), of PostgreSQL (postmaster + every backend, reaped ones included) and of
the emulator from replay start to the last row; peak RSS of the client (VmHWM); exactly once =
stored rows per instrument == ticker notifications the emulator sent for it, and no duplicate
(instrument, exchange timestamp). Results: a Markdown table on stdout and JSON + logs in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402
    BENCH_VENUES, CAPTURE, REPO, PgCpu, Workload, _reader, cpu_s, environment, expected_connections,
    free_port, med, snapshot, vm_hwm_mib,
)

from collector_daemon.rows import QUOTES  # noqa: E402
from collector_daemon.storage.localdb import LocalPostgres  # noqa: E402
from collector_daemon.storage.migrate import migrate  # noqa: E402

HERE = Path(__file__).resolve().parent
PEERS_VENV = REPO / ".venv-peers"
ARMS = ("tickvault", "seed", "cryptofeed")
#: The workload of every arm: Deribit options (the only venue the seed design and the cryptofeed
#: arm speak), planned as ``benchmarks/ingest.py`` plans it.
plan = BENCH_VENUES["deribit"].plan
#: cryptofeed's tables (its examples/postgres_tables.sql: ticker and trades)
CRYPTOFEED_DDL = """
CREATE TABLE IF NOT EXISTS ticker (id serial PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP,
    exchange VARCHAR(32), symbol VARCHAR(32), bid NUMERIC(64, 32), ask NUMERIC(64, 32));
CREATE TABLE IF NOT EXISTS trades (id serial PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP,
    exchange VARCHAR(32), symbol VARCHAR(32), side VARCHAR(8), amount NUMERIC(64, 32), price NUMERIC(64, 32),
    trade_id VARCHAR(64), order_type VARCHAR(32));
"""
CRYPTOFEED_PER_FEED = 250


@dataclass
class ArmSpec:
    """How one arm is set up, started and counted.

    ``count_sql`` returns ``(instrument key, rows, distinct exchange timestamps)`` per instrument;
    ``commit_sql`` the last commit time of the stored rows (timestamptz).
    """

    name: str
    fields: str
    count_sql: str
    commit_sql: str


SPECS = {
    "tickvault": ArmSpec(
        "tickvault", f"all {len(QUOTES.columns)} quote columns (prices, sizes, IVs, greeks, OI, stats...)",
        "SELECT instrument_name, count(*), count(DISTINCT exchange_ts) FROM quotes GROUP BY 1",
        "SELECT max(pg_xact_commit_timestamp(xmin)) FROM quotes"),
    "seed": ArmSpec(
        "seed", "8 columns: exchange_ts, instrument_name, best bid/ask price and amount, mark_price, "
                "underlying_price",
        "SELECT instrument_name, count(*), count(DISTINCT exchange_ts) FROM quotes GROUP BY 1",
        "SELECT max(pg_xact_commit_timestamp(xmin)) FROM quotes"),
    "cryptofeed": ArmSpec(
        "cryptofeed", "ticker: timestamp, receipt_timestamp, exchange, symbol, bid, ask (bid/ask only)",
        "SELECT symbol, count(*), count(DISTINCT timestamp) FROM ticker GROUP BY 1",
        "SELECT max(pg_xact_commit_timestamp(xmin)) FROM ticker"),
}


def ensure_peers_venv(path: Path = PEERS_VENV) -> Path:
    """The virtualenv of the cryptofeed arm (created with pip from PyPI when missing); returns
    its python."""
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {path}: python -m venv + pip install 'cryptofeed[postgres]'", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "cryptofeed[postgres]"], check=True)
    return python


def peer_versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, platform; print(json.dumps({'python': platform.python_version(), "
            "**{p: m.version(p) for p in ('cryptofeed', 'websockets', 'aiohttp', 'asyncpg', 'yapic.json')}}))")
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def https_json(url: str, ca: Path, timeout: float = 60.0) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def tree_cpu_s(p: psutil.Process) -> float:
    """CPU s of a process and its live children."""
    total = cpu_s(p)
    for c in p.children(recursive=True):
        total += cpu_s(c)
    return total


def _stop(proc: subprocess.Popen | None, timeout: float = 60) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_arm(args: argparse.Namespace, pg: LocalPostgres, w: Workload, arm: str, index: int,
            out: Path) -> dict[str, Any]:
    """One run of one arm; the result dict (see the module docstring)."""
    spec = SPECS[arm]
    run_dir = out / f"{arm}-{index}"
    run_dir.mkdir(parents=True)
    db = f"peers_{arm}_{index}"
    dsn = pg.create_database(db)
    if arm == "tickvault":
        migrate(dsn, args.src / "schema")
    else:
        sys.path.insert(0, str(HERE))
        from seed_design import DDL
        with psycopg.connect(dsn, autocommit=True) as c:
            if arm == "seed":
                c.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            c.execute(DDL if arm == "seed" else CRYPTOFEED_DDL)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CHECKPOINT")
    port = free_port()
    tls_dir = run_dir / "tls"
    ca = tls_dir / "ca.crt"
    src = args.src
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("TICKVAULT_")}
    env_base |= {"PYTHONUNBUFFERED": "1", "SSL_CERT_FILE": str(ca), "REQUESTS_CA_BUNDLE": str(ca)}
    ws_url, rest_base = f"wss://127.0.0.1:{port}/ws/api/v2", f"https://127.0.0.1:{port}"
    col_env = dict(env_base, PYTHONPATH=str(src), TICKVAULT_DATABASE_URL=dsn,
                   TICKVAULT_DERIBIT_WS_URL=ws_url, TICKVAULT_DERIBIT_REST_URL=f"{rest_base}/api/v2",
                   TICKVAULT_TOP_N="all", TICKVAULT_CURRENCY=",".join(w.groups),
                   TICKVAULT_METRICS_PORT="", TICKVAULT_SPOOL_DIR=str(run_dir / "spool"),
                   TICKVAULT_STATS_INTERVAL_S="100000")
    if arm == "tickvault":
        waits = expected_connections(w.instruments + len(w.groups), {})
        cmd = [sys.executable, "-m", "collector_daemon.cli", "collect"]
        env, cwd = col_env, src
    elif arm == "seed":
        waits = 1
        cmd = [sys.executable, str(HERE / "seed_design.py"), ws_url, f"{rest_base}/api/v2", dsn,
               "--currency", ",".join(w.groups)]
        env, cwd = dict(env_base, PYTHONPATH=""), run_dir
    else:
        waits = -(-w.instruments // CRYPTOFEED_PER_FEED)
        cmd = [str(args.peers_python), str(HERE / "peers_cryptofeed.py"), "--ws", ws_url, "--rest", rest_base,
               "--currency", ",".join(w.groups), "--pg-port", str(pg.port), "--db", db,
               "--per-feed", str(CRYPTOFEED_PER_FEED), "--symbols-out", str(run_dir / "symbols.json")]
        env, cwd = dict(env_base, PYTHONPATH=""), run_dir
    emu_cmd = [sys.executable, "-m", "collector_daemon.cli", "emulate", str(CAPTURE), "--speed", "max",
               "--loop", str(w.loops), "--fanout", str(w.fanout), "--port", str(port),
               "--wait-for-clients", str(waits), "--tls", str(tls_dir)]
    if args.emulator_path == "fast":
        emu_cmd.append("--fast")
    ready, finished = threading.Event(), threading.Event()
    emu = subprocess.Popen(emu_cmd, cwd=src, env=dict(env_base, PYTHONPATH=str(src)), stdout=subprocess.PIPE,
                           stderr=open(run_dir / "emulator.err", "w"), text=True)
    threading.Thread(target=_reader, args=(emu.stdout, run_dir / "emulator.log", [], ready, finished),
                     daemon=True).start()
    client = None
    result: dict[str, Any] = {"arm": arm, "run": index, "client_cmd": " ".join(cmd[1:]),
                              "emulator_cmd": " ".join(emu_cmd[1:])}
    try:
        if not ready.wait(120):
            raise RuntimeError(f"emulator did not start; see {run_dir}")
        client = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(run_dir / "client.out", "w"),
                                  stderr=open(run_dir / "client.log", "w"))
        clientp, emup = psutil.Process(client.pid), psutil.Process(emu.pid)
        pgcpu = PgCpu(int((pg.pgdata / "postmaster.pid").read_text().split()[0]))
        poll = psycopg.connect(dsn, autocommit=True)
        pgcpu.exclude.add(poll.execute("SELECT pg_backend_pid()").fetchone()[0])
        stats_url = f"{rest_base}/emulator/stats"
        deadline = time.time() + 180
        base = None
        while True:   # baseline: the last sample while the replay still waits for its clients
            snap = {"client": tree_cpu_s(clientp), "pg": pgcpu.sample()["total"], "emulator": cpu_s(emup),
                    "t": time.time()}
            st = https_json(stats_url, ca)
            if st["replay"]["state"] != "waiting":
                break
            base = snap
            if client.poll() is not None:
                raise RuntimeError(f"{arm} exited with {client.returncode}; see {run_dir}/client.log")
            if time.time() > deadline:
                raise RuntimeError(f"replay did not start ({st['totals']['clients']} clients); see {run_dir}")
            time.sleep(0.05)
        base = base or snap
        started_at = st["replay"]["started_at"]
        while not finished.wait(1.0):
            if client.poll() is not None:
                raise RuntimeError(f"{arm} exited with {client.returncode}; see {run_dir}/client.log")
            if emu.poll() is not None or time.time() - started_at > args.timeout:
                raise RuntimeError(f"emulator ended or timed out; see {run_dir}")
        stats = https_json(stats_url, ca, timeout=300)
        sent = stats["totals"]["frames_by_instrument"].get("ticker", {})
        want = sum(sent.values())
        last, last_change = -1, time.time()
        while True:   # every row committed, or the count stopped growing
            n = poll.execute(f"SELECT count(*) FROM {'ticker' if arm == 'cryptofeed' else 'quotes'}").fetchone()[0]
            if n != last:
                last, last_change = n, time.time()
            if n >= want or time.time() - last_change > args.settle or client.poll() is not None:
                break
            time.sleep(0.25)
        end = {"client": tree_cpu_s(clientp), "pg": pgcpu.sample()["total"], "emulator": cpu_s(emup),
               "t": time.time()}
        peak = vm_hwm_mib(client.pid)
        per_key = {k: (int(n), int(d)) for k, n, d in poll.execute(spec.count_sql).fetchall()}
        last_commit = poll.execute(spec.commit_sql).fetchone()[0]
        poll.close()
        if arm == "cryptofeed":
            names = json.loads((run_dir / "symbols.json").read_text())
            per_key = {names.get(k, k): v for k, v in per_key.items()}
        stored = sum(n for n, _ in per_key.values())
        dups = sum(n - d for n, d in per_key.values())
        mismatched = sum(1 for k, v in sent.items() if per_key.get(k, (0, 0))[0] != v) + sum(
            1 for k in per_key if k not in sent)
        wall = (last_commit.timestamp() - started_at) if last_commit else float("nan")
        d = {k: end[k] - base[k] for k in ("client", "pg", "emulator")}
        result.update({
            "emulator_path": stats["replay"]["path"], "emulator_fast_fallback": stats["replay"]["fast_fallback"],
            "connections": len(stats["clients"]), "notifications": stats["totals"]["notifications"],
            "sent_tickers": want, "stored": stored, "duplicates": dups, "instruments_mismatched": mismatched,
            "exactly_once": stored == want and dups == 0 and mismatched == 0,
            "wall_s": wall, "rows_per_s": stored / wall if wall == wall and wall > 0 else None,
            "cpu_s": d, "peak_rss_mib": peak, "fields": spec.fields,
            "client_us_per_row": 1e6 * d["client"] / stored if stored else None,
            "pg_us_per_row": 1e6 * d["pg"] / stored if stored else None,
            "emulator_us_per_notification": 1e6 * d["emulator"] / stats["totals"]["notifications"],
        })
        return result
    finally:
        _stop(client)
        _stop(emu)
        try:
            pg.drop_database(db)
        except Exception as exc:  # noqa: BLE001 - reported, the next run gets its own database
            print(f"  could not drop {db}: {exc}", file=sys.stderr)


def summary(env: dict[str, Any], peers: dict[str, str], w: Workload, results: list[dict[str, Any]]) -> str:
    ok = [r for r in results if "error" not in r]
    out = [f"## Peers ({env['date']})", "",
           f"machine: {env['cpu']}, {env['ram_gib']} GiB, Linux {env['kernel']}; load average at start "
           f"{env['loadavg_at_start'][0]:.2f}",
           f"tickvault @ {env['git_head']}: Python {env['python']}; "
           + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
           "cryptofeed arm (.venv-peers): " + ", ".join(f"{k} {v}" for k, v in peers.items()),
           f"PostgreSQL {env['postgresql']}, TimescaleDB {env['timescaledb']} (durable: fsync, synchronous_commit on)",
           f"workload: {','.join(w.groups)} options x fan-out {w.fanout} = {w.instruments} instruments, "
           f"{w.loops} loops, {w.loops * w.loop_tickers:,} ticker notifications over wss:// "
           f"(emulator path: {', '.join(sorted({str(r['emulator_path']) for r in ok})) or '-'})", "",
           "| | " + " | ".join(a for a in ARMS if any(r["arm"] == a for r in results)) + " |",
           "|---|" + "---:|" * len([a for a in ARMS if any(r["arm"] == a for r in results)])]
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]

    def row(title: str, f) -> None:
        cells = []
        for a in arms:
            rs = [r for r in ok if r["arm"] == a]
            cells.append(f(rs) if rs else "failed")
        out.append(f"| {title} | " + " | ".join(cells) + " |")

    g = lambda key: lambda rs: med([r[key] for r in rs])  # noqa: E731
    row("runs", lambda rs: str(len(rs)))
    row("rows/s end to end, median (min-max)", g("rows_per_s"))
    row("client CPU µs per row", g("client_us_per_row"))
    row("PostgreSQL CPU µs per row", g("pg_us_per_row"))
    row("client + PostgreSQL CPU µs per row", lambda rs: med([r["client_us_per_row"] + r["pg_us_per_row"]
                                                              for r in rs]))
    row("peak RSS MiB (client)", g("peak_rss_mib"))
    row("emulator CPU µs per notification", g("emulator_us_per_notification"))
    row("stored / sent (per run)", lambda rs: ", ".join(f"{r['stored']:,} / {r['sent_tickers']:,}" for r in rs))
    row("every notification stored exactly once", lambda rs: ", ".join(
        "yes" if r["exactly_once"] else f"NO ({r['duplicates']} dup, {r['instruments_mismatched']} instr. off)"
        for r in rs))
    row("connections", lambda rs: str(rs[0]["connections"]))
    row("fields stored", lambda rs: rs[0]["fields"])
    if "tickvault" in arms:
        tv = {r["run"]: r["rows_per_s"] for r in ok if r["arm"] == "tickvault"}
        row("tickvault rows/s ÷ this arm's (same run)", lambda rs: med(
            [tv[r["run"]] / r["rows_per_s"] for r in rs if r["run"] in tv and r["rows_per_s"]]))
    for r in results:
        if "error" in r:
            out.append(f"\nrun {r['arm']}-{r['run']} FAILED: {r['error']}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--runs", type=int, default=2, help="runs of each arm, interleaved (default 2)")
    p.add_argument("--messages", type=int, default=1_000_000, help="ticker notifications per run")
    p.add_argument("--instruments", type=int, default=1000, help="option instruments after fan-out")
    p.add_argument("--currency", default="ETH")
    p.add_argument("--emulator-path", choices=("fast", "faithful"), default="fast")
    p.add_argument("--settle", type=float, default=30.0,
                   help="stop waiting for missing rows when the count is stable this long (s)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up on a replay after this long (s)")
    p.add_argument("--peers-venv", type=Path, default=PEERS_VENV)
    p.add_argument("--out", type=Path, help="results directory (default: a new temp directory)")
    args = p.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
    peers = {}
    if "cryptofeed" in arms:
        args.peers_python = ensure_peers_venv(args.peers_venv)
        peers = peer_versions(args.peers_python)
    currencies = tuple(c.strip().upper() for c in args.currency.split(",") if c.strip())
    w = plan(currencies, args.instruments, messages=args.messages, trades=None)
    print(f"workload: fan-out {w.fanout} ({w.instruments} instruments), {w.loops} loops x {w.loop_tickers:,} "
          f"tickers = {w.loops * w.loop_tickers:,}", file=sys.stderr)
    out = args.out or Path(tempfile.mkdtemp(prefix="tickvault-peers-"))
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="tickvault-peers-pg-"))
    base.chmod(0o755)
    pg = LocalPostgres(base / "pg", timescaledb=True, durable=True, settings={"track_commit_timestamp": "on"})
    results: list[dict[str, Any]] = []
    try:
        pg.start()
        env = environment(pg, REPO)
        args.src = snapshot(REPO, base / "src")
        for i in range(1, args.runs + 1):
            for arm in arms:
                print(f"run {arm}-{i} ...", file=sys.stderr, flush=True)
                try:
                    r = run_arm(args, pg, w, arm, i, out)
                    print(f"  {r['rows_per_s'] or 0:,.0f} rows/s, exactly once {r['exactly_once']} "
                          f"({r['stored']:,}/{r['sent_tickers']:,}), client {r['client_us_per_row'] or 0:.2f} µs/row, "
                          f"PG {r['pg_us_per_row'] or 0:.2f} µs/row, RSS {r['peak_rss_mib'] or 0:.0f} MiB, "
                          f"emulator {r['emulator_us_per_notification']:.2f} µs/notification ({r['emulator_path']})",
                          file=sys.stderr, flush=True)
                except Exception as exc:  # noqa: BLE001 - reported; the other arms go on
                    r = {"arm": arm, "run": i, "error": f"{type(exc).__name__}: {exc}"}
                    print(f"  FAILED: {r['error']}", file=sys.stderr, flush=True)
                results.append(r)
                (out / f"{arm}-{i}").mkdir(exist_ok=True)
                (out / f"{arm}-{i}" / "result.json").write_text(json.dumps(r, indent=1, default=str))
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    text = summary(env, peers, w, results)
    (out / "summary.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"environment": env, "peers": peers, "results": results,
                                                  "date": datetime.now(UTC).isoformat()}, indent=1, default=str))
    print(text)
    print(f"\nresults and logs: {out}")
    return 0 if results and all("error" not in r and r["exactly_once"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

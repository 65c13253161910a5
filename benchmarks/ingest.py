"""End-to-end ingest benchmark: exchange emulator -> collector -> TimescaleDB, on this machine.

Run by hand (not part of CI). Defaults take about 4 minutes on 2 cores::

    .venv/bin/python benchmarks/ingest.py                       # 1 max-speed run + 1 paced run (120 s)
    .venv/bin/python benchmarks/ingest.py --runs 2 --duration 300     # what docs/benchmarks.md reports
    .venv/bin/python benchmarks/ingest.py --mode max --runs 2 --currency BTC      # tickers + trades
    .venv/bin/python benchmarks/ingest.py --mode max --runs 0 --messages 1000000 --profile   # py-spy
    .venv/bin/python benchmarks/ingest.py --mode ceiling --runs 2     # the emulator alone
    .venv/bin/python benchmarks/ingest.py --venue bybit --mode max --runs 2 --messages 300000  # Bybit linear
    .venv/bin/python benchmarks/ingest.py --mode max --workers 1,2    # scaling over collect --workers N

Three processes share the cores, as in production on one box:

* the emulator: ``python -m collector_daemon.cli emulate CAPTURE [--trades T --align-trades]
  --speed max|<factor> --loop K --fanout F --port P --wait-for-clients W`` replays the real
  2021-04-05 Deribit capture (and, for BTC, the real 2026-08-17 BTC option trades), every option
  instrument fanned out F times (about ``--instruments`` in all) and the timeline looped K times
  (about ``--messages`` notifications, or ``--rate`` msg/s for ``--duration`` s);
* the collector: ``python -m collector_daemon.cli collect`` configured only by ``TICKVAULT_*``
  variables (currency, TOP_N=all, emulator URLs, no metrics port, a private spool, a stats
  interval longer than the run so its last stats line covers the run, ``TICKVAULT_WORKERS`` from
  ``--workers``), logging to a file; with N > 1 workers its CPU, RSS and peak RSS are those of
  the supervisor and its N worker processes together;
* PostgreSQL + TimescaleDB from ``LocalPostgres`` in a temp directory, ``durable=True`` (fsync,
  synchronous_commit on, full_page_writes: the stock durability), default memory settings, plus
  ``track_commit_timestamp=on`` (see "latency" below). Every run gets a fresh database with the
  schema applied by ``collector_daemon.storage.migrate.migrate``.

Mix: ``--currency ETH`` (default) = the 7 ETH options x 143 = 1,001 instruments, ticker frames only
(the capture has no ETH trades; live traffic is mostly tickers). ``--currency BTC`` = the 3 BTC
options' tickers and the 11 traded BTC options, x 71 = 994 instruments, 78% of the frames trades
(exercises the trades table and the gap detector; not a realistic proportion).

Venues (``--venue``; a :class:`BenchVenue` each: workload, emulator arguments, collector
environment, tables): ``deribit`` (default, the above) and ``bybit``: the real 2026-08-09 v5
capture's linear ``tickers`` (snapshot + deltas, merged by the collector) and ``publicTrade``
messages of BTC/ETH/SOL/DOGEUSDT, every symbol fanned out by the emulator into copies
(``X{j}BTCUSDT``, about ``--instruments`` symbols in all, 88% ticker frames, 3.2 trades per trade
frame) into ``bybit_tickers`` and ``bybit_trades``; the emulator starts its clock when the first
connection has subscribed and no subscribe request came for 3 s (``--start-grace``).

What is measured, per run:

* **rows/s** = rows stored (quotes + trades) / (last commit - replay start). "Replay start" is
  the emulator's ``replay.started_at`` (wall clock when its replay loop starts; the first frames
  leave within a millisecond); "last commit" is ``max(pg_xact_commit_timestamp(xmin))`` over the
  stored rows, i.e. the commit time of the last batch, read from PostgreSQL itself. Also reported:
  the emulator's send duration and the collector's receive span.
* **receive -> commit latency** of *every* row: ``pg_xact_commit_timestamp(xmin) - receive_ts``
  (same machine clock; ``receive_ts`` is stamped by the collector when the frame is read). The
  collector's own reservoir-sampled figures from its final stats line are shown beside it.
* **completeness / exactly once**: stored rows per instrument == the emulator's
  ``frames_by_instrument.ticker``, stored trades == ``trades_sent`` (deduplicated by trade id when
  several connections got the trades channel), and the natural keys are unique (the schema's
  UNIQUE constraints), so stored == sent means nothing lost and nothing doubled.
* **peak RSS** of the collector (``VmHWM`` from /proc, the kernel's high-water mark), and RSS sampled
  every second for the paced run (first minute vs last minute).
* **CPU seconds** (user + sys) from replay start to the last commit: the collector, PostgreSQL
  (postmaster + every child, reaped ones included through the postmaster's children times; the
  benchmark's own polling backend excluded), the emulator, and everything else on the machine
  (system-wide busy time minus those: other people's load).

Modes: ``max`` (as fast as the collector drains, ``--messages`` notifications), ``rate``
(``--rate`` msg/s for ``--duration`` s: the emulator speed factor is solved from the capture's
timestamps) and ``ceiling`` (the emulator alone, read by a client that only counts bytes: the
highest rate the emulator itself can send). ``--profile`` adds one max-speed run under
``py-spy record`` (not counted in the medians) and summarises the collector's samples by bucket,
self time and inclusive time. ``--runs N`` repeats each mode N times, interleaved, and the summary gives the median
and the min-max spread. The code under test is copied (collector_daemon/, orchestration/, schema/) into
the temp directory when the benchmark starts, so commits landing during a long run do not change it
between runs; ``--collector-src DIR`` runs another source tree instead (an A/B experiment on a
patched copy; ``--collector-env NAME=VALUE`` and ``--schema-dir DIR`` are the other A/B knobs).

Results: a Markdown summary on stdout, and everything (per-run JSON, logs, profiles) in
``--out`` (default: a new temp directory, printed at the end). Nothing is written into the repo.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import psycopg

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from collector_daemon.storage.localdb import LocalPostgres  # noqa: E402
from collector_daemon.storage.migrate import migrate  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "real"
CAPTURE = DATA / "deribit" / "cryptofeed_2021-04-05_options_ticker_book_ws.jsonl.gz"
TRADES = DATA / "deribit" / "cyri113_2026-08-17_btc_perpetual+0dte_options_trades_from_sqlite_wal.csv.gz"
BYBIT_CAPTURE = (DATA / "bybit" / "cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_"
                 "orderbook_kline+instruments-info.jsonl.gz")
MAX_IDLE_S = 2.0  # the emulator's default cap of one pause (--max-idle)
BYBIT_START_GRACE_S = 3.0   # emulate --start-grace: the collector subscribes in many requests


# ------------------------------------------------------------------------------------------------
# Workload: fan-out, loops and speed from the capture itself
# ------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    venue: str
    groups: tuple[str, ...]     # Deribit: the currencies; Bybit: the capture's linear symbols
    use_trades: bool
    fanout: int
    instruments: int            # instruments the collector subscribes (after fan-out)
    loop_tickers: int           # ticker notifications per loop (after fan-out)
    loop_trade_frames: int      # trades notifications per loop
    loop_trades: int            # trades (rows) per loop
    loops: int
    speed: str                  # "max" or the factor
    loop_wall_s: float | None   # wall seconds per loop at that speed (paced mode)
    symbols: tuple[str, ...] = ()   # Bybit: every linear symbol subscribed (originals + copies)

    @property
    def loop_frames(self) -> int:
        return self.loop_tickers + self.loop_trade_frames

    @property
    def frames(self) -> int:
        return self.loops * self.loop_frames

    @property
    def rows(self) -> int:
        return self.loops * (self.loop_tickers + self.loop_trades)


def pace(w: Workload, ts: list[int], shift: int, *, messages: int | None, rate: float | None,
         duration: float | None) -> Workload:
    """Loops for ``messages`` notifications (max speed), or the speed factor and loops of a paced
    run at ``rate`` msg/s for ``duration`` s; ``ts`` = the timeline's event times (ms), ``shift``
    = how far the emulator moves each loop (ms)."""
    if rate is None:
        w.loops = max(1, math.ceil(messages / w.loop_frames))
        return w
    # paced: the replayer waits min(gap / speed, max_idle) between consecutive events, the last
    # event of a loop and the first of the next are shift - span ms apart
    gaps = [b - a for a, b in zip(ts, ts[1:])] + [ts[0] + shift - ts[-1]]

    def wall(speed: float) -> float:
        return sum(min(g / 1000.0 / speed, MAX_IDLE_S) for g in gaps)

    target = w.loop_frames / rate          # wall seconds one loop must take
    lo, hi = 1e-3, 1e6
    if wall(hi) > target:
        raise SystemExit(f"--rate {rate:g} is out of reach of this timeline (max-idle caps)")
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if wall(mid) > target else (lo, mid)
    w.speed = f"{hi:.6g}"
    w.loop_wall_s = wall(float(w.speed))
    w.loops = max(1, math.ceil(duration / w.loop_wall_s))
    return w


class BenchVenue:
    """What the benchmark needs of a venue: the workload drawn from its real capture, the
    emulator's arguments, the collector's environment, and where the rows land.

    Attributes:
        name: the registered venue.
        tables: (tickers table, trades table).
        ticker_kind: the key of the emulator's ``frames_by_instrument`` counting ticker frames.
        ticker_key: the tickers table's natural key (the duplicate check).
    """

    name: str
    tables: tuple[str, str]
    ticker_kind: str
    ticker_key: str

    def plan(self, groups: tuple[str, ...], instruments: int, *, messages: int | None = None,
             rate: float | None = None, duration: float | None = None) -> Workload:
        raise NotImplementedError

    def emulator_args(self, w: Workload) -> list[str]:
        """``emulate`` arguments before the speed, loop, fan-out and port ones."""
        raise NotImplementedError

    def wait_args(self, w: Workload, env: dict[str, str], given: int, workers: int) -> list[str]:
        """``emulate`` arguments deciding when the replay clock starts (``workers``: the
        collector's ``TICKVAULT_WORKERS``)."""
        raise NotImplementedError

    def collector_env(self, w: Workload, port: int) -> dict[str, str]:
        """The collector's ``TICKVAULT_*`` variables naming the venue, its URLs and its universe."""
        raise NotImplementedError

    def describe(self, w: Workload) -> str:
        """The workload in a few words (summary)."""
        raise NotImplementedError


class DeribitBench(BenchVenue):
    """Deribit options: the 2021-04-05 capture's tickers (and, for BTC, the real 2026-08-17 BTC
    option trades), every option fanned out by the emulator's ``--fanout`` (re-keyed strikes)."""

    name = "deribit"
    tables = ("quotes", "trades")
    ticker_kind = "ticker"
    ticker_key = "exchange_ts, instrument_name, venue"

    def plan(self, groups, instruments, *, messages=None, rate=None, duration=None,
             trades: Path | None = TRADES) -> Workload:
        from collector_daemon.venues.deribit.emulation import DeribitEmulation

        emu = DeribitEmulation(1)
        events = emu.load(CAPTURE, trades, True)
        opts: set[str] = set()
        for cur in groups:
            opts |= {r["instrument_name"] for r in emu.rest.get_instruments({"currency": cur, "kind": "option"})}
        channels = {f"trades.option.{c}" for c in groups}
        use_trades = any(e.kind == "trades" and channels & set(e.routes) for e in events)
        if trades is not None and not use_trades:
            # no trade reaches these currencies: leave the source out (it would only cost emulator
            # CPU and stretch a paced timeline to the trades' day)
            return self.plan(groups, instruments, messages=messages, rate=rate, duration=duration,
                             trades=None)
        fanout = max(1, round(instruments / len(opts)))
        tickers = sum(1 for e in events if e.kind == "ticker" and e.instrument in opts)
        t_frames = [e for e in events if e.kind == "trades" and channels & set(e.routes)]
        w = Workload("deribit", groups, use_trades, fanout, len(opts) * fanout, tickers * fanout,
                     len(t_frames) * fanout, sum(len(e.data) for e in t_frames) * fanout,
                     1, "max", None)
        ts = [e.ts for e in events]
        shift = getattr(emu, "_ts_shift", 0) or (ts[-1] - ts[0] + 1)
        return pace(w, ts, shift, messages=messages, rate=rate, duration=duration)

    def emulator_args(self, w):
        return [str(CAPTURE)] + (["--trades", str(TRADES), "--align-trades"] if w.use_trades else [])

    def wait_args(self, w, env, given, workers):
        return ["--wait-for-clients", str(given or worker_connections(w, workers, env))]

    def collector_env(self, w, port):
        return {"TICKVAULT_DERIBIT_WS_URL": f"ws://127.0.0.1:{port}/ws/api/v2",
                "TICKVAULT_DERIBIT_REST_URL": f"http://127.0.0.1:{port}/api/v2",
                "TICKVAULT_TOP_N": "all", "TICKVAULT_CURRENCY": ",".join(w.groups)}

    def describe(self, w):
        return f"{','.join(w.groups)} options"


class BybitBench(BenchVenue):
    """Bybit linear (USDT perpetuals): the 2026-08-09 v5 capture's ``tickers`` (snapshot +
    deltas) and ``publicTrade`` messages of its 4 linear symbols, each symbol fanned out by the
    emulator's ``--fanout`` into copies ``X{j}{symbol}`` sent the original's messages re-keyed
    (:mod:`collector_daemon.venues.bybit.emulation`); the collector subscribes every symbol's
    ``tickers`` and ``publicTrade`` on the linear endpoint."""

    name = "bybit"
    tables = ("bybit_tickers", "bybit_trades")
    ticker_kind = "tickers"
    ticker_key = "exchange_ts, venue, category, instrument_name"

    def plan(self, groups, instruments, *, messages=None, rate=None, duration=None) -> Workload:
        from collector_daemon.venues.bybit.emulation import BybitEmulation

        events = BybitEmulation(1).load(BYBIT_CAPTURE, None)
        linear = [e for e in events if e.routes[0].startswith("linear|")]
        symbols = tuple(sorted({e.routes[0].split(".", 1)[1] for e in linear}))
        fanout = max(1, round(instruments / len(symbols)))
        emu = BybitEmulation(fanout)
        emu.load(BYBIT_CAPTURE, None)
        everyone = symbols + tuple(c for s in symbols for c in emu.copies.get(s, ()))
        t_frames = [e for e in linear if e.kind == "trades"]
        w = Workload("bybit", symbols, bool(t_frames), fanout, len(everyone),
                     sum(1 for e in linear if e.kind == "tickers") * fanout, len(t_frames) * fanout,
                     sum(len(e.data["data"]) for e in t_frames) * fanout, 1, "max", None, everyone)
        ts = [e.ts for e in events]     # the emulator plays spot too (nobody subscribes it)
        return pace(w, ts, ts[-1] - ts[0] + 1, messages=messages, rate=rate, duration=duration)

    def emulator_args(self, w):
        return [str(BYBIT_CAPTURE), "--venue", "bybit"]

    def wait_args(self, w, env, given, workers):
        # the collector subscribes its thousands of topics 10 per request over several sockets:
        # start when the first has subscribed and no request came for a while
        return ["--wait-for-clients", str(given or 1), "--start-grace", str(BYBIT_START_GRACE_S)]

    def collector_env(self, w, port):
        return {"TICKVAULT_VENUE": "bybit", "TICKVAULT_BYBIT_CATEGORIES": "linear",
                "TICKVAULT_BYBIT_LINEAR_SYMBOLS": ",".join(w.symbols),
                "TICKVAULT_BYBIT_LINEAR_WS_URL": f"ws://127.0.0.1:{port}/v5/public/linear",
                "TICKVAULT_BYBIT_REST_URL": f"http://127.0.0.1:{port}", "TICKVAULT_BYBIT_PRIVATE": "false"}

    def describe(self, w):
        return f"linear {','.join(w.groups)} (tickers + publicTrade)"


BENCH_VENUES: dict[str, BenchVenue] = {v.name: v for v in (DeribitBench(), BybitBench())}


# ------------------------------------------------------------------------------------------------
# Process accounting
# ------------------------------------------------------------------------------------------------


def cpu_s(p: psutil.Process | None) -> float:
    if p is None:
        return 0.0
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


def tree(p: psutil.Process) -> list[psutil.Process]:
    """``p`` and its live descendants (the collector's worker processes)."""
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return [p]


def tree_cpu_s(p: psutil.Process) -> float:
    """CPU seconds of ``p`` and its live descendants."""
    return sum(cpu_s(q) for q in tree(p))


def tree_rss_mib(p: psutil.Process) -> float:
    total = 0.0
    for q in tree(p):
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss / 2**20
    return total


class PgCpu:
    """CPU of a PostgreSQL cluster: the postmaster, its live children and (through the
    postmaster's children times) the children it has reaped. ``exclude`` = backend pids not to
    count (the benchmark's own connection)."""

    def __init__(self, postmaster_pid: int) -> None:
        self.pm = psutil.Process(postmaster_pid)
        self.exclude: set[int] = set()

    def sample(self) -> dict[str, float]:
        t = self.pm.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        backends = 0.0
        for c in self.pm.children():
            if c.pid in self.exclude:
                continue
            try:
                ct = c.cpu_times()
                name = " ".join(c.cmdline())
            except psutil.Error:
                continue
            total += ct.user + ct.system
            if "127.0.0.1(" in name or "[local]" in name:  # client backends
                backends += ct.user + ct.system
        return {"total": total, "backends": backends}


def system_busy_s() -> float:
    t = psutil.cpu_times()
    return (t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
            + getattr(t, "steal", 0))


def vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Sampler:
    """Samples RSS and CPU of the collector (and CPU of PG / the emulator) every ``period`` s."""

    collector: psutil.Process
    emulator: psutil.Process
    pg: PgCpu
    period: float
    samples: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if not self.collector.is_running():
                return
            rss = tree_rss_mib(self.collector)
            self.samples.append({"t": time.time(), "rss_mib": rss, "collector_cpu": tree_cpu_s(self.collector),
                                 "pg_cpu": self.pg.sample()["total"], "emulator_cpu": cpu_s(self.emulator)})


# ------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------


def snapshot(repo: Path, dest: Path) -> Path:
    """Copy the code the runs execute (collector, emulator, orchestration helpers, schema) so that
    commits landing while the benchmark runs do not change it between runs."""
    for d in ("collector_daemon", "orchestration", "schema"):
        shutil.copytree(repo / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def snapshot_schema(src: Path, base: Path) -> Path:
    """A --collector-src tree without schema/: use the repo's schema beside it (a symlink farm)."""
    dest = base / "src"
    dest.mkdir()
    for child in src.iterdir():
        (dest / child.name).symlink_to(child)
    shutil.copytree(REPO / "schema", dest / "schema")
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 30.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def expected_connections(channels: int, env: dict[str, str]) -> int:
    """How many sockets the collector will open (its channels_per_connection setting, when the
    collector has one), so the emulator's clock starts only when every one has subscribed."""
    try:
        from collector_daemon.settings import Settings
        fields = Settings.model_fields
        per = int(env.get("TICKVAULT_CHANNELS_PER_CONNECTION") or fields["channels_per_connection"].default)
        most = int(env.get("TICKVAULT_MAX_CONNECTIONS") or fields["max_connections"].default)
        return max(1, min(most, math.ceil(channels / per)))
    except (ImportError, KeyError, TypeError, ValueError):
        return 1


def worker_connections(w: "Workload", workers: int, env: dict[str, str]) -> int:
    """The sockets ``collect --workers N`` opens in all: each worker's channels (its shard of the
    fanned-out instruments, plus the chain-wide trades channels in worker 1) at its share of
    ``TICKVAULT_MAX_CONNECTIONS``."""
    if workers == 1:
        return expected_connections(w.instruments + len(w.groups), env)
    from collector_daemon.settings import Settings
    from collector_daemon.sharding import shard_of, worker_shard
    from collector_daemon.venues.deribit.emulation import DeribitEmulation
    emu = DeribitEmulation(w.fanout)
    emu.load(CAPTURE, None, True)
    names = [r["instrument_name"] for cur in w.groups
             for r in emu.rest.get_instruments({"currency": cur, "kind": "option"})]
    most = int(env.get("TICKVAULT_MAX_CONNECTIONS") or Settings.model_fields["max_connections"].default)
    share = dict(env, TICKVAULT_MAX_CONNECTIONS=str(max(1, most // workers)))
    total = 0
    for i in range(1, workers + 1):
        k, n = worker_shard((1, 1), i, workers)
        mine = sum(1 for name in names if shard_of(name, n) == k)
        total += expected_connections(mine + (len(w.groups) if i == 1 else 0), share)
    return total


def _reader(stream, log: Path, lines: list[str], ready: threading.Event, done: threading.Event) -> None:
    with open(log, "a") as fh:
        for line in stream:
            fh.write(line)
            fh.flush()
            lines.append(line)
            if line.startswith("emulator ("):
                ready.set()
            elif line.startswith("replay finished"):
                done.set()


STATS_RE = re.compile(r"stats: messages=(?P<messages>\d+) rows=(?P<rows>\{.*?\}) duplicates=(?P<dups>\{.*?\}) "
                      r"rejected=(?P<rejected>\d+) .*?reconnects=(?P<reconnects>\d+) .*?"
                      r"receive->commit p50/p99=(?P<p50>[\d.None]+)/(?P<p99>[\d.None]+) ms")


def collector_stats_line(log: Path) -> dict[str, Any] | None:
    last = None
    for line in log.read_text(errors="replace").splitlines():
        m = STATS_RE.search(line)
        if m:
            last = m
    if last is None:
        return None
    num = lambda s: None if s == "None" else float(s)  # noqa: E731
    return {"messages": int(last["messages"]), "rows": ast.literal_eval(last["rows"]),
            "duplicates": ast.literal_eval(last["dups"]), "rejected": int(last["rejected"]),
            "reconnects": int(last["reconnects"]), "p50_ms": num(last["p50"]), "p99_ms": num(last["p99"])}


LATENCY_SQL = """
WITH r AS (
    SELECT receive_ts, pg_xact_commit_timestamp(xmin) AS committed FROM {tickers}
    UNION ALL
    SELECT receive_ts, pg_xact_commit_timestamp(xmin) FROM {trades}
), l AS (SELECT receive_ts, committed, extract(epoch FROM committed - receive_ts) * 1000 AS ms FROM r)
SELECT count(*), percentile_disc(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP (ORDER BY ms), max(ms),
       extract(epoch FROM min(receive_ts)), extract(epoch FROM max(receive_ts)),
       extract(epoch FROM max(committed)), count(*) FILTER (WHERE committed IS NULL)
FROM l
"""

PER_MINUTE_SQL = """
WITH r AS (
    SELECT receive_ts, pg_xact_commit_timestamp(xmin) AS committed FROM {tickers}
    UNION ALL
    SELECT receive_ts, pg_xact_commit_timestamp(xmin) FROM {trades}
)
SELECT floor(extract(epoch FROM receive_ts - %(t0)s::timestamptz) / 60)::int AS minute, count(*),
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM committed - receive_ts) * 1000),
       max(extract(epoch FROM committed - receive_ts) * 1000)
FROM r GROUP BY 1 ORDER BY 1
"""


def run_once(args: argparse.Namespace, pg: LocalPostgres, w: Workload, mode: str, index: int,
             out: Path, profile: bool, workers: int = 1) -> dict[str, Any]:
    tag = f"{mode}-{index}" + (f"-w{workers}" if workers > 1 else "")
    run_dir = out / tag
    run_dir.mkdir(parents=True)
    db = f"bench_{mode}_{index}_w{workers}"
    dsn = pg.create_database(db)
    migrate(dsn, Path(args.schema_dir) if args.schema_dir else args.src / "schema")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CHECKPOINT")
    port = free_port()
    python = sys.executable
    src = args.src
    bench = BENCH_VENUES[w.venue]
    tickers_table, trades_table = bench.tables
    extra_env = dict(kv.split("=", 1) for kv in args.collector_env)
    wait_args = bench.wait_args(w, extra_env, args.wait_for_clients, workers)
    emu_cmd = [python, "-m", "collector_daemon.cli", "emulate", *bench.emulator_args(w)]
    emu_cmd += ["--speed", w.speed, "--loop", str(w.loops), "--fanout", str(w.fanout),
                "--port", str(port), *wait_args]
    if args.emulator_path == "fast":
        emu_cmd.append("--fast")
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("TICKVAULT_")}
    env_base["PYTHONUNBUFFERED"] = "1"
    env_base["PYTHONPATH"] = str(src)
    emu_lines: list[str] = []
    ready, finished = threading.Event(), threading.Event()
    emu = subprocess.Popen(emu_cmd, cwd=src, env=env_base, stdout=subprocess.PIPE,
                           stderr=open(run_dir / "emulator.err", "w"), text=True)
    threading.Thread(target=_reader, args=(emu.stdout, run_dir / "emulator.log", emu_lines, ready,
                                           finished), daemon=True).start()
    col = None
    spy = None
    result: dict[str, Any] = {"mode": mode, "run": index, "workers": workers,
                              "emulator_cmd": " ".join(emu_cmd[1:])}
    try:
        if not ready.wait(120):
            raise RuntimeError(f"emulator did not start; see {run_dir}")
        col_env = dict(env_base, PYTHONPATH=str(src), TICKVAULT_DATABASE_URL=dsn,
                       TICKVAULT_METRICS_PORT="", TICKVAULT_SPOOL_DIR=str(run_dir / "spool"),
                       TICKVAULT_STATS_INTERVAL_S="100000", TICKVAULT_LOG_LEVEL="INFO",
                       TICKVAULT_WORKERS=str(workers), **bench.collector_env(w, port))
        col_env.update(extra_env)
        col_cmd = [python, "-m", "collector_daemon.cli", "collect"]
        result["collector_cmd"] = "python -m collector_daemon.cli collect"
        col = subprocess.Popen(col_cmd, cwd=src, env=col_env, stdout=open(run_dir / "collector.out", "w"),
                               stderr=open(run_dir / "collector.log", "w"))
        colp, emup = psutil.Process(col.pid), psutil.Process(emu.pid)
        pgcpu = PgCpu(int((pg.pgdata / "postmaster.pid").read_text().split()[0]))
        poll = psycopg.connect(dsn, autocommit=True)
        pgcpu.exclude.add(poll.execute("SELECT pg_backend_pid()").fetchone()[0])
        me = psutil.Process()
        stats_url = f"http://127.0.0.1:{port}/emulator/stats"
        # baseline: the last sample taken while the replay is still waiting for its clients
        deadline = time.time() + 120
        base = None
        while True:
            snap = {"collector": tree_cpu_s(colp), "pg": pgcpu.sample(), "emulator": cpu_s(emup),
                    "system": system_busy_s(), "me": cpu_s(me), "t": time.time()}
            st = http_json(stats_url)
            if st["replay"]["state"] != "waiting":
                break
            base = snap
            if col.poll() is not None:
                raise RuntimeError(f"collector exited with {col.returncode}; see {run_dir}/collector.log")
            if time.time() > deadline:
                raise RuntimeError(f"replay did not start (clients {st['totals']['clients']}); see {run_dir}")
            time.sleep(0.05)
        base = base or snap
        started_at = st["replay"]["started_at"]
        result["load_before"] = os.getloadavg()
        sampler = Sampler(colp, emup, pgcpu, 1.0 if mode == "rate" else 0.5)
        sampler.start()
        if profile:
            spy = start_profile(col.pid, run_dir / "profile.txt", args.native)
        # the replay's end: the emulator prints its summary
        limit = (w.frames / 3000 if w.speed == "max" else w.loops * w.loop_wall_s * 1.5) + 300
        while not finished.wait(1.0):
            if col.poll() is not None:
                raise RuntimeError(f"collector exited with {col.returncode}; see {run_dir}/collector.log")
            if emu.poll() is not None or time.time() - started_at > limit:
                raise RuntimeError(f"emulator ended or timed out; see {run_dir}")
        stats = http_json(stats_url + "?trade_ids=true", timeout=300)
        (run_dir / "emulator_stats.json").write_text(json.dumps(
            {k: v for k, v in stats.items() if k != "clients"} | {"clients": [
                {k: v for k, v in c.items() if k not in ("trade_ids", "by_channel", "frames_by_instrument")}
                for c in stats["clients"]]}, indent=1))
        tickers = stats["totals"]["frames_by_instrument"].get(bench.ticker_kind, {})
        trade_keys = {tuple(k) for c in stats["clients"] for k in c.get("trade_ids", [])}
        want_q, want_t = sum(tickers.values()), len(trade_keys)
        # wait until every row is committed (or the count stops growing)
        last, last_change, t_done = -1, time.time(), None
        while True:
            nq = poll.execute(f"SELECT count(*) FROM {tickers_table}").fetchone()[0]
            nt = poll.execute(f"SELECT count(*) FROM {trades_table}").fetchone()[0]
            if nq + nt != last:
                last, last_change = nq + nt, time.time()
            if (nq >= want_q and nt >= want_t) or time.time() - last_change > args.settle:
                t_done = time.time()
                break
            if col.poll() is not None:
                raise RuntimeError(f"collector exited with {col.returncode}; see {run_dir}/collector.log")
            time.sleep(0.25)
        end = {"collector": tree_cpu_s(colp), "pg": pgcpu.sample(), "emulator": cpu_s(emup),
               "system": system_busy_s(), "me": cpu_s(me), "t": time.time()}
        peak = sum(vm_hwm_mib(q.pid) or 0.0 for q in tree(colp))
        sampler.stop()
        if spy is not None:
            result["profile"] = stop_profile(spy, run_dir / "profile.txt", args.top)
            spy = None
        result["load_after"] = os.getloadavg()
        # exact figures from the database
        row = poll.execute(LATENCY_SQL.format(tickers=tickers_table, trades=trades_table)).fetchone()
        n_rows, pct, lat_max, rx_first, rx_last, last_commit, no_ts = row
        per_inst = dict(poll.execute(f"SELECT instrument_name, count(*) FROM {tickers_table} GROUP BY 1").fetchall())
        dup_q = poll.execute(f"SELECT count(*) - count(DISTINCT ({bench.ticker_key})) "
                             f"FROM {tickers_table}").fetchone()[0]
        per_minute = []
        if mode == "rate":
            for minute, n, p, mx in poll.execute(PER_MINUTE_SQL.format(tickers=tickers_table, trades=trades_table),
                                                 {"t0": datetime.fromtimestamp(
                    float(rx_first), UTC)}).fetchall():
                per_minute.append({"minute": minute, "rows": n, "p50_ms": float(p[0]), "p99_ms": float(p[1]),
                                   "max_ms": float(mx)})
        poll.close()
        # stop the collector (it flushes nothing more: everything is committed) and the emulator
        col.send_signal(signal.SIGTERM)
        try:
            col.wait(120)
        except subprocess.TimeoutExpired:
            col.kill()
            col.wait()
        emu.send_signal(signal.SIGTERM)
        try:
            emu.wait(60)
        except subprocess.TimeoutExpired:
            emu.kill()
            emu.wait()
        wall = float(last_commit) - started_at
        d = lambda k: end[k] - base[k]  # noqa: E731
        pg_total = end["pg"]["total"] - base["pg"]["total"]
        ours = d("collector") + pg_total + d("emulator") + d("me")
        rss = sampler.samples
        result.update({
            "workload": {"venue": w.venue, "describe": bench.describe(w), "groups": list(w.groups),
                         "fanout": w.fanout, "loops": w.loops,
                         "speed": w.speed, "instruments": w.instruments,
                         "subscribed_channels": sum(len(c["subscriptions"]) for c in stats["clients"]),
                         "connections": len(stats["clients"]), "wait": " ".join(wait_args)},
            "emulator_path": stats["replay"].get("path"),
            "emulator_fast_fallback": stats["replay"].get("fast_fallback"),
            "sent": {"notifications": stats["totals"]["notifications"], "ticker_frames": want_q,
                     "trades": want_t, "ticker_instruments": len(tickers),
                     "trade_frames": stats["totals"]["notifications"] - want_q,
                     "emulator_send_s": stats["replay"]["finished_at"] - started_at},
            "stored": {"quotes": int(sum(per_inst.values())), "trades": int(n_rows) - int(sum(per_inst.values())),
                       "rows": int(n_rows), "duplicate_keys": int(dup_q),
                       "instruments_mismatched": sum(1 for k, v in tickers.items() if per_inst.get(k) != v)
                       + sum(1 for k in per_inst if k not in tickers)},
            "complete": (int(sum(per_inst.values())) == want_q and int(n_rows) - int(sum(per_inst.values())) == want_t
                         and all(per_inst.get(k) == v for k, v in tickers.items()) and dup_q == 0),
            "wall_s": wall,
            "rows_per_s": int(n_rows) / wall,
            "msgs_per_s": stats["totals"]["notifications"] / wall,
            "receive_span_s": float(rx_last) - float(rx_first),
            "commit_tail_s": float(last_commit) - float(rx_last),
            "detect_lag_s": t_done - float(last_commit),
            "latency_ms": {"p50": float(pct[0]), "p90": float(pct[1]), "p99": float(pct[2]),
                           "p999": float(pct[3]), "max": float(lat_max), "rows_without_commit_ts": int(no_ts)},
            "collector_stats": collector_stats_line(run_dir / "collector.log"),
            "collector_exit": col.returncode,
            "peak_rss_mib": peak,
            "cpu_s": {"collector": d("collector"), "postgres": pg_total,
                      "postgres_backends": end["pg"]["backends"] - base["pg"]["backends"],
                      "emulator": d("emulator"), "benchmark": d("me"),
                      "others": d("system") - ours, "window_s": end["t"] - base["t"]},
            "per_minute": per_minute,
            "samples": rss,
        })
        if mode == "rate":
            result["flat"] = flatness(rss, per_minute, started_at, result["receive_span_s"])
        return result
    finally:
        if spy is not None:
            with contextlib.suppress(Exception):
                spy.kill()
        for p in (col, emu):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        with contextlib.suppress(Exception):
            pg.drop_database(db)


def flatness(samples: list[dict[str, float]], per_minute: list[dict], started_at: float,
             span_s: float) -> dict[str, Any]:
    """First minute vs last full minute of the paced run: RSS (sampled each second) and latency."""
    if not samples:
        return {}
    t_end = samples[-1]["t"]
    first = [s["rss_mib"] for s in samples if s["t"] - started_at < 60]
    last = [s["rss_mib"] for s in samples if t_end - s["t"] < 60]
    # whole minutes of receive time only (the last one is usually partial)
    full = [m for m in per_minute if (m["minute"] + 1) * 60 <= span_s + 1] or per_minute
    lm = full[-1] if full else None
    return {"rss_first_min_mib": {"mean": statistics.fmean(first), "max": max(first)} if first else None,
            "rss_last_min_mib": {"mean": statistics.fmean(last), "max": max(last)} if last else None,
            "p99_first_min_ms": full[0]["p99_ms"] if full else None,
            "p99_last_min_ms": lm["p99_ms"] if full else None,
            "rows_first_min": full[0]["rows"] if full else None,
            "rows_last_full_min": lm["rows"] if full else None, "last_full_minute": lm["minute"] if full else None}


# ------------------------------------------------------------------------------------------------
# Emulator ceiling: the emulator alone, read by a client that only counts bytes
# ------------------------------------------------------------------------------------------------


async def _raw_ws_reader(port: int, channels: list[str], finished: threading.Event) -> int:
    """A minimal WebSocket client (RFC 6455): handshake, subscribe in frames of 250 channels,
    then read and discard until the replay is over. Returns the bytes received."""
    import asyncio
    import base64

    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws/api/v2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    for i in range(0, len(channels), 250):
        payload = json.dumps({"jsonrpc": "2.0", "id": i + 1, "method": "public/subscribe",
                              "params": {"channels": channels[i:i + 250]}}).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes((0x81, 0x80 | n)) if n < 126 else (
            bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big") if n < 65536
            else bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big"))
        writer.write(head + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(payload)))
    await writer.drain()
    total = 0
    while not finished.is_set():
        try:
            data = await asyncio.wait_for(reader.read(1 << 20), 0.5)
        except asyncio.TimeoutError:
            continue
        if not data:
            break
        total += len(data)
    writer.close()
    return total


def run_ceiling(args: argparse.Namespace, w: Workload, index: int, out: Path) -> dict[str, Any]:
    """The emulator's own maximum send rate for this workload (no collector, no database)."""
    import asyncio

    if w.venue != "deribit":
        raise RuntimeError("--mode ceiling reads Deribit's protocol only")
    run_dir = out / f"ceiling-{index}"
    run_dir.mkdir(parents=True)
    port = free_port()
    emu_cmd = [sys.executable, "-m", "collector_daemon.cli", "emulate", str(CAPTURE)]
    if w.use_trades:
        emu_cmd += ["--trades", str(TRADES), "--align-trades"]
    emu_cmd += ["--speed", "max", "--loop", str(w.loops), "--fanout", str(w.fanout), "--port", str(port),
                "--wait-for-clients", "1"] + (["--fast"] if args.emulator_path == "fast" else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKVAULT_")} | {
        "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(args.src)}
    ready, finished = threading.Event(), threading.Event()
    emu = subprocess.Popen(emu_cmd, cwd=args.src, env=env, stdout=subprocess.PIPE,
                           stderr=open(run_dir / "emulator.err", "w"), text=True)
    threading.Thread(target=_reader, args=(emu.stdout, run_dir / "emulator.log", [], ready, finished),
                     daemon=True).start()
    try:
        if not ready.wait(120):
            raise RuntimeError(f"emulator did not start; see {run_dir}")
        names = []
        for cur in w.groups:
            names += [r["instrument_name"] for r in http_json(
                f"http://127.0.0.1:{port}/api/v2/public/get_instruments?currency={cur}&kind=option")["result"]]
        channels = [f"trades.option.{c}.100ms" for c in w.groups] + [f"ticker.{n}.100ms" for n in names]
        emup, me = psutil.Process(emu.pid), psutil.Process()
        base = {"emulator": cpu_s(emup), "me": cpu_s(me), "system": system_busy_s()}
        got = asyncio.run(_raw_ws_reader(port, channels, finished))
        end = {"emulator": cpu_s(emup), "me": cpu_s(me), "system": system_busy_s()}
        stats = http_json(f"http://127.0.0.1:{port}/emulator/stats")
        send_s = stats["replay"]["finished_at"] - stats["replay"]["started_at"]
        n = stats["totals"]["notifications"]
        return {"mode": "ceiling", "run": index, "emulator_path": stats["replay"]["path"],
                "emulator_fast_fallback": stats["replay"]["fast_fallback"],
                "notifications": n, "bytes": got, "send_s": send_s,
                "msgs_per_s": n / send_s, "emulator_cpu_s": end["emulator"] - base["emulator"],
                "emulator_us_per_msg": 1e6 * (end["emulator"] - base["emulator"]) / n,
                "reader_cpu_s": end["me"] - base["me"],
                "others_cpu_s": end["system"] - base["system"] - (end["emulator"] - base["emulator"])
                - (end["me"] - base["me"])}
    finally:
        if emu.poll() is None:
            emu.send_signal(signal.SIGTERM)
            try:
                emu.wait(60)
            except subprocess.TimeoutExpired:
                emu.kill()
                emu.wait()


# ------------------------------------------------------------------------------------------------
# Profiling (py-spy)
# ------------------------------------------------------------------------------------------------


def start_profile(pid: int, path: Path, native: bool) -> subprocess.Popen:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    cmd = [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--function",
           "--output", str(path)]
    # --native needs to pause the process for each sample; without it py-spy reads memory only
    cmd.append("--native" if native else "--nonblocking")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(path.with_suffix(".err"), "w"))


FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: buckets for the summary: each sample goes to the innermost frame that matches one, so a
#: C function (msgspec, asyncpg) counts for the Python code that called it
BUCKETS = [
    ("garbage collector", ("gc_collect",)),
    ("JSON decode (msgspec, protocol.decode)", ("msgspec", "deribit/protocol.py:", "bybit/protocol.py:")),
    ("row tuples (messages.to_row; Bybit ticker_row/trade_row incl. json.dumps of other)",
     ("deribit/messages.py:", "bybit/messages.py:")),
    ("DB write: asyncpg numeric encoding (with --native)", ("numeric_encode", "Decimal", "decimal")),
    ("DB write: asyncpg COPY encode + send, commit", ("asyncpg", "writer.py:", "tenacity")),
    ("latency sampling (daemon._on_written, metrics)", ("daemon.py:_on_written", "metrics.py:")),
    ("trade gap detector (gaps.py)", ("gaps.py:",)),
    ("pipeline add/seal/queue (pipeline.py)", ("pipeline.py:",)),
    ("collector read loop (connection.py _read)", ("connection.py:_read", "collector_daemon/connection.py:")),
    ("WebSocket client (picows): frame parsing, recv", ("websockets/", "picows")),
    ("asyncio event loop, sockets, selectors", ("asyncio/", "selectors.py", "_asynciomodule", "socket",
                                                "uvloop", "recv (libc", "epoll")),
    ("logging", ("logging/",)),
]


def _bucket(frames: list[tuple[str, str]]) -> str:
    for fn, fl in reversed(frames):
        key = f"{fl}:{fn}"
        for name, keys in BUCKETS:
            if any(k in key for k in keys):
                return name
    return "other"


def _parse_frame(frame: str) -> tuple[str, str]:
    m = FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip(), ""
    f = m["file"]
    short = f.split("site-packages/")[-1] if "site-packages/" in f else f.split("/work/main/")[-1]
    short = re.sub(r"^.*/lib/python3\.\d+/", "", short)
    return m["func"], short


def stop_profile(spy: subprocess.Popen, path: Path, top: int) -> dict[str, Any]:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    if not path.exists():
        return {"error": (path.with_suffix(".err")).read_text()[-2000:]}
    return analyse_profile(path, top)


def analyse_profile(path: Path, top: int) -> dict[str, Any]:
    """Self time, inclusive time and buckets from a py-spy ``--format raw`` file."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    buckets: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = [_parse_frame(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        names = [f"{fn} ({fl})" for fn, fl in frames]
        self_t[names[-1]] = self_t.get(names[-1], 0) + n
        for name in set(names):
            incl[name] = incl.get(name, 0) + n
        label = _bucket(frames)
        buckets[label] = buckets.get(label, 0) + n
    pct = lambda d: [(k, round(100 * v / total, 1)) for k, v in  # noqa: E731
                     sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    incl = {k: v for k, v in incl.items() if v < 0.95 * total}  # drop the root chain (main, run_forever...)
    return {"samples": total, "self": pct(self_t), "inclusive": pct(incl), "buckets": pct(buckets),
            "file": str(path)}


# ------------------------------------------------------------------------------------------------
# Environment and summary
# ------------------------------------------------------------------------------------------------


def environment(pg: LocalPostgres, src: Path) -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    versions = {}
    for pkg in ("asyncpg", "picows", "websockets", "msgspec", "psycopg", "psutil", "py-spy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        pg_version = c.execute("SHOW server_version").fetchone()[0]
        settings = dict(c.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
            "('shared_buffers', 'synchronous_commit', 'fsync', 'full_page_writes', 'wal_level', "
            "'max_wal_size', 'track_commit_timestamp', 'checkpoint_timeout')").fetchall())
        tsdb = c.execute("SELECT default_version FROM pg_available_extensions "
                         "WHERE name = 'timescaledb'").fetchone()
    git = lambda *a: subprocess.run(["git", "-C", str(src), *a], capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--", "collector_daemon")
    diff = git("diff", "HEAD", "--", "collector_daemon")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {psutil.cpu_count()} vCPU", "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(), "packages": versions,
        "postgresql": pg_version, "timescaledb": tsdb[0] if tsdb else None, "pg_settings": settings,
        "collector_src": str(src), "git_head": git("rev-parse", "--short", "HEAD"),
        "collector_daemon_dirty": len(dirty.splitlines()),
        "collector_daemon_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:10] if dirty else None,
        "loadavg_at_start": os.getloadavg(),
    }


def med(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    m = statistics.median(vals)
    fmt = (lambda v: f"{v:,.0f}") if m >= 100 else (lambda v: f"{v:,.2f}")
    return fmt(m) if len(vals) == 1 else f"{fmt(m)} ({fmt(min(vals))}-{fmt(max(vals))})"


def summary(env: dict[str, Any], results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [f"## Ingest results ({env['date']})", "",
           f"machine: {env['cpu']}, {env['ram_gib']} GiB, Linux {env['kernel']}; Python {env['python']}; "
           + ", ".join(f"{k} {v}" for k, v in env["packages"].items()),
           f"PostgreSQL {env['postgresql']}, TimescaleDB {env['timescaledb']}, durable "
           + ", ".join(f"{k}={v}" for k, v in sorted(env["pg_settings"].items())),
           f"collector: {env['collector_src']} @ {env['git_head']}"
           + (f" + {env['collector_daemon_dirty']} uncommitted file(s) in collector_daemon/ "
              f"(diff sha1 {env['collector_daemon_diff_sha1']})" if env["collector_daemon_dirty"] else ""),
           ""]
    counts = sorted({r.get("workers", 1) for r in results})
    for mode, nw in ((m, n) for m in ("max", "rate") for n in counts):
        rs = [r for r in results if r["mode"] == mode and r.get("workers", 1) == nw and "error" not in r]
        if not rs:
            continue
        plain = [r for r in rs if "profile" not in r] or rs
        r0 = rs[0]
        wl = r0["workload"]
        workers = f", {nw} worker process(es) (collect --workers {nw})" if counts != [1] else ""
        out += [f"### {'max speed' if mode == 'max' else 'paced'}{workers}: {len(plain)} run(s), median (min-max)", "",
                f"workload: {wl['venue']} {wl['describe']}, fan-out {wl['fanout']} -> "
                f"{wl['instruments']} instruments ({wl['subscribed_channels']} channels on "
                f"{wl['connections']} connection(s)), {wl['loops']} loops, speed {wl['speed']}; "
                f"sent {r0['sent']['notifications']:,} notifications = {r0['sent']['ticker_frames']:,} tickers "
                f"+ {r0['sent']['trade_frames']:,} trades frames ({r0['sent']['trades']:,} trades)", "",
                "| metric | value |", "|---|---:|"]
        g = lambda f: [f(r) for r in plain]  # noqa: E731
        rows = [
            ("complete (stored == sent, per instrument; no duplicate key)",
             ", ".join("yes" if r["complete"] else "NO" for r in plain)),
            ("rows stored / sent", ", ".join(f"{r['stored']['rows']:,} / {r['sent']['ticker_frames'] + r['sent']['trades']:,}"
                                             for r in plain)),
            ("rows/s end to end (replay start -> last commit)", med(g(lambda r: r["rows_per_s"]))),
            ("notifications/s end to end", med(g(lambda r: r["msgs_per_s"]))),
            ("wall s (replay start -> last commit)", med(g(lambda r: r["wall_s"]))),
            ("emulator send s", med(g(lambda r: r["sent"]["emulator_send_s"]))),
            ("emulator path (loops after the first)", ", ".join(
                f"{r.get('emulator_path')}" + (f" ({r['emulator_fast_fallback']})"
                                               if r.get("emulator_fast_fallback") else "") for r in plain)),
            ("last receive -> last commit s", med(g(lambda r: r["commit_tail_s"]))),
            ("receive->commit p50 ms (all rows)", med(g(lambda r: r["latency_ms"]["p50"]))),
            ("receive->commit p99 ms (all rows)", med(g(lambda r: r["latency_ms"]["p99"]))),
            ("receive->commit max ms", med(g(lambda r: r["latency_ms"]["max"]))),
            ("collector's own stats line p50 / p99 ms", ", ".join(
                f"{(r['collector_stats'] or {}).get('p50_ms')} / {(r['collector_stats'] or {}).get('p99_ms')}"
                for r in plain)),
            ("collector peak RSS MiB (VmHWM)", med(g(lambda r: r["peak_rss_mib"]))),
            ("CPU s collector", med(g(lambda r: r["cpu_s"]["collector"]))),
            ("CPU s PostgreSQL (all processes)", med(g(lambda r: r["cpu_s"]["postgres"]))),
            ("CPU s PostgreSQL client backends", med(g(lambda r: r["cpu_s"]["postgres_backends"]))),
            ("CPU s emulator", med(g(lambda r: r["cpu_s"]["emulator"]))),
            ("emulator CPU µs per notification", med(g(lambda r: 1e6 * r["cpu_s"]["emulator"]
                                                       / r["sent"]["notifications"]))),
            ("CPU s everything else on the machine", med(g(lambda r: r["cpu_s"]["others"]))),
            ("collector CPU µs per row", med(g(lambda r: 1e6 * r["cpu_s"]["collector"] / r["stored"]["rows"]))),
            ("PostgreSQL CPU µs per row", med(g(lambda r: 1e6 * r["cpu_s"]["postgres"] / r["stored"]["rows"]))),
            ("load average before / after (1 min)", ", ".join(
                f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}" for r in plain)),
        ]
        if mode == "rate":
            rows += [
                ("achieved rows/s, first minute -> last full minute", ", ".join(
                    f"{r['flat']['rows_first_min'] / min(60, r['receive_span_s']):,.0f} -> "
                    f"{r['flat']['rows_last_full_min'] / min(60, r['receive_span_s']):,.0f}" for r in plain)),
                ("p99 ms, first minute -> last full minute", ", ".join(
                    f"{r['flat']['p99_first_min_ms']:,.0f} -> {r['flat']['p99_last_min_ms']:,.0f}" for r in plain)),
                ("RSS MiB mean, first minute -> last minute", ", ".join(
                    f"{r['flat']['rss_first_min_mib']['mean']:,.0f} -> {r['flat']['rss_last_min_mib']['mean']:,.0f}"
                    for r in plain)),
                ("collector CPU % of one core", med(g(lambda r: 100 * r["cpu_s"]["collector"] / r["wall_s"]))),
                ("PostgreSQL CPU % of one core", med(g(lambda r: 100 * r["cpu_s"]["postgres"] / r["wall_s"]))),
            ]
        out += [f"| {k} | {v} |" for k, v in rows] + [""]
        if mode == "rate":
            for r in plain:
                out.append(f"run {r['run']} per minute (rows, p50/p99/max ms): " + "; ".join(
                    f"{m['minute']}: {m['rows']:,}, {m['p50_ms']:.0f}/{m['p99_ms']:.0f}/{m['max_ms']:.0f}"
                    for m in r["per_minute"]))
            out.append("")
        for r in rs:
            if "profile" in r and "error" in r["profile"]:
                out += [f"profile of {r['mode']}-{r['run']} failed: {r['profile']['error']}", ""]
            if "profile" in r and "self" in r["profile"]:
                p = r["profile"]
                out += [f"profile of {r['mode']}-{r['run']} ({p['samples']} samples at 100 Hz, "
                        f"{r['rows_per_s']:,.0f} rows/s under py-spy): {p['file']}", "",
                        "| bucket | % of collector samples |", "|---|---:|"]
                out += [f"| {k} | {v} |" for k, v in p["buckets"]] + ["", "| self time (leaf function) | % |", "|---|---:|"]
                out += [f"| `{k}` | {v} |" for k, v in p["self"]] + ["", "| inclusive | % |", "|---|---:|"]
                out += [f"| `{k}` | {v} |" for k, v in p["inclusive"]] + [""]
    if len(counts) > 1:
        out += scaling(results, counts)
    cs = [r for r in results if r["mode"] == "ceiling" and "error" not in r]
    if cs:
        out += [f"### emulator ceiling (emulator alone, max speed, a byte-counting client): {len(cs)} run(s)", "",
                "| metric | value |", "|---|---:|",
                f"| notifications | {cs[0]['notifications']:,} |",
                f"| emulator path | {', '.join(str(r['emulator_path']) for r in cs)} |",
                f"| msg/s sent | {med([r['msgs_per_s'] for r in cs])} |",
                f"| emulator CPU µs per message | {med([r['emulator_us_per_msg'] for r in cs])} |",
                f"| CPU s everything else on the machine | {med([r['others_cpu_s'] for r in cs])} |", ""]
    failed = [r for r in results if "error" in r]
    for r in failed:
        out.append(f"run {r['mode']}-{r['run']} FAILED: {r['error']}")
    return "\n".join(out)


def scaling(results: list[dict[str, Any]], counts: list[int]) -> list[str]:
    """The ``--workers`` comparison: per mode and worker count, medians of rows/s, CPU per row
    and peak RSS, and rows/s relative to the fewest workers (the same run's baseline)."""
    out = ["### workers: scaling (medians of this run)", "",
           "| mode | workers | complete | rows/s | x fewest | collector µs/row | PostgreSQL µs/row "
           "| emulator µs/notification | peak RSS MiB (all processes) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for mode in ("max", "rate"):
        base = None
        for nw in counts:
            rs = [r for r in results if r["mode"] == mode and r.get("workers", 1) == nw
                  and "error" not in r and "profile" not in r]
            if not rs:
                continue
            rate = statistics.median(r["rows_per_s"] for r in rs)
            base = base or rate
            m = lambda f: statistics.median(f(r) for r in rs)  # noqa: E731
            out.append(f"| {mode} | {nw} | {', '.join('yes' if r['complete'] else 'NO' for r in rs)} "
                       f"| {rate:,.0f} | {rate / base:.2f} "
                       f"| {m(lambda r: 1e6 * r['cpu_s']['collector'] / r['stored']['rows']):.2f} "
                       f"| {m(lambda r: 1e6 * r['cpu_s']['postgres'] / r['stored']['rows']):.2f} "
                       f"| {m(lambda r: 1e6 * r['cpu_s']['emulator'] / r['sent']['notifications']):.2f} "
                       f"| {m(lambda r: r['peak_rss_mib']):.0f} |")
    return out + [""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("max", "rate", "both", "ceiling"), default="both",
                   help="max, rate, both (default), or ceiling: the emulator alone at max speed, read "
                        "by a client that only counts bytes (its own send ceiling)")
    p.add_argument("--messages", type=int, default=2_000_000, help="max mode: notifications to replay")
    p.add_argument("--rate", type=float, default=20_000, help="rate mode: notifications per second")
    p.add_argument("--duration", type=float, default=120, help="rate mode: seconds")
    p.add_argument("--runs", type=int, default=1, help="repetitions of each mode (interleaved)")
    p.add_argument("--venue", choices=sorted(BENCH_VENUES), default="deribit",
                   help="deribit (default): options from the 2021-04-05 capture; bybit: linear "
                        "tickers + trades from the 2026-08-09 v5 capture, symbols fanned out")
    p.add_argument("--workers", default="1",
                   help="collector worker processes (TICKVAULT_WORKERS), comma-separated to compare "
                        "(e.g. 1,2: each run of each mode with each count, interleaved)")
    p.add_argument("--currency", default="ETH",
                   help="collector currencies (TICKVAULT_CURRENCY): ETH = tickers only (the capture "
                        "has no ETH trades); BTC = BTC tickers + the real BTC option trades")
    p.add_argument("--instruments", type=int, default=1000, help="option instruments after fan-out")
    p.add_argument("--profile", action="store_true",
                   help="one extra max-speed run under py-spy (not counted in the medians)")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames of asyncpg, msgspec)")
    p.add_argument("--top", type=int, default=25, help="profile rows to show")
    p.add_argument("--emulator-path", choices=("fast", "faithful"), default="fast",
                   help="fast (default): the emulator sends loops after the first from pre-rendered "
                        "frames (emulate --fast; ~1 µs per frame); faithful: every loop rendered "
                        "event by event. The summary says which path played")
    p.add_argument("--settle", type=float, default=20.0,
                   help="give up waiting for missing rows after the count is stable this long (s)")
    p.add_argument("--wait-for-clients", type=int, default=0,
                   help="emulator --wait-for-clients (default: the collector's connection count)")
    p.add_argument("--collector-src", help="run the collector from this source tree (A/B experiments)")
    p.add_argument("--collector-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the collector (e.g. TICKVAULT_BATCH_ROWS=20000)")
    p.add_argument("--schema-dir", help="apply the migrations of this directory instead of schema/ "
                   "(A/B experiments on the schema)")
    p.add_argument("--out", type=Path, help="results directory (default: a new temp directory)")
    p.add_argument("--analyse-profile", type=Path, metavar="RAW",
                   help="only summarise an existing py-spy raw profile and exit")
    args = p.parse_args()
    if args.analyse_profile:
        prof = analyse_profile(args.analyse_profile, args.top)
        for title in ("buckets", "self", "inclusive"):
            print(f"\n| {title} | % of samples ({prof['samples']}) |\n|---|---:|")
            print("\n".join(f"| `{k}` | {v} |" for k, v in prof[title]))
        return 0

    currencies = tuple(c.strip().upper() for c in args.currency.split(",") if c.strip())
    bench = BENCH_VENUES[args.venue]
    modes = ["max", "rate"] if args.mode == "both" else [args.mode]
    workloads = {}
    if "max" in modes or "ceiling" in modes or args.profile:
        workloads["max"] = workloads["ceiling"] = bench.plan(currencies, args.instruments,
                                                                     messages=args.messages)
    if "rate" in modes:
        workloads["rate"] = bench.plan(currencies, args.instruments, rate=args.rate,
                                       duration=args.duration)
    for mode, w in workloads.items():
        if mode not in modes and not (mode == "max" and args.profile):
            continue
        print(f"{mode}: fan-out {w.fanout} ({w.instruments} instruments), {w.loops} loops x "
              f"{w.loop_frames:,} notifications ({w.loop_tickers:,} tickers + {w.loop_trade_frames:,} trades "
              f"frames) = {w.frames:,}, speed {w.speed}"
              + (f" ({w.loop_frames / w.loop_wall_s:,.0f} msg/s, {w.loops * w.loop_wall_s:.0f} s)"
                 if w.loop_wall_s else ""), file=sys.stderr)

    out = args.out or Path(tempfile.mkdtemp(prefix="tickvault-ingest-"))
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="tickvault-ingest-pg-"))
    base.chmod(0o755)
    pg = LocalPostgres(base / "pg", timescaledb=True, durable=True,
                       settings={"track_commit_timestamp": "on"})
    results: list[dict[str, Any]] = []
    try:
        pg.start()
        if args.collector_src:
            args.src = Path(args.collector_src).resolve()
            if not (args.src / "schema").is_dir():
                args.src = snapshot_schema(args.src, base)
            env = environment(pg, Path(args.collector_src).resolve())
        else:
            env = environment(pg, REPO)   # git state of the code snapshotted right after
            args.src = snapshot(REPO, base / "src")
            env["collector_src"] = f"{REPO} (snapshot at start)"
        counts = [int(n) for n in args.workers.split(",")]
        jobs = [(mode, i, False, nw) for i in range(1, args.runs + 1) for mode in modes
                for nw in (counts if mode != "ceiling" else [1])]
        if args.profile:
            jobs.append(("max", args.runs + 1, True, 1))
        for mode, i, prof, nw in jobs:
            print(f"run {mode}-{i}{' (py-spy)' if prof else ''}"
                  f"{f', {nw} workers' if nw > 1 else ''} ...", file=sys.stderr, flush=True)
            try:
                if mode == "ceiling":
                    r = run_ceiling(args, workloads[mode], i, out)
                    print(f"  emulator alone ({r['emulator_path']} path): {r['msgs_per_s']:,.0f} msg/s, "
                          f"{r['emulator_us_per_msg']:.2f} "
                          f"CPU µs/msg, others {r['others_cpu_s']:.1f} CPU s", file=sys.stderr)
                    results.append(r)
                    continue
                r = run_once(args, pg, workloads[mode], mode, i, out, prof, nw)
            except Exception as exc:  # noqa: BLE001 - report it, go on with the next run
                r = {"mode": mode, "run": i, "workers": nw, "error": f"{type(exc).__name__}: {exc}"}
            results.append(r)
            tag = f"{mode}-{i}" + (f"-w{nw}" if nw > 1 else "")
            (out / tag).mkdir(exist_ok=True)
            (out / tag / "result.json").write_text(json.dumps(r, indent=1, default=str))
            if "error" in r:
                print(f"  FAILED: {r['error']}", file=sys.stderr)
            else:
                print(f"  {r['rows_per_s']:,.0f} rows/s, complete={r['complete']}, "
                      f"p50/p99 {r['latency_ms']['p50']:.0f}/{r['latency_ms']['p99']:.0f} ms, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB, CPU s collector {r['cpu_s']['collector']:.1f} "
                      f"PG {r['cpu_s']['postgres']:.1f} emulator {r['cpu_s']['emulator']:.1f} "
                      f"others {r['cpu_s']['others']:.1f}", file=sys.stderr, flush=True)
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    text = summary(env, results, args)
    (out / "summary.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"environment": env, "args": vars(args), "results": results},
                                                 indent=1, default=str))
    print(text)
    print(f"\nresults, logs and profiles: {out}")
    return 0 if results and all("error" not in r and r.get("complete", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

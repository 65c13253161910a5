"""``tickvault collect --workers N`` (``TICKVAULT_WORKERS``): one daemon on N cores.

One collector process is bound to one core (asyncio, one thread decodes and writes). With
``--workers N`` the ``collect`` process becomes a supervisor of N collector processes
(``collect --worker i/N``, started through :class:`~collector_daemon.supervisor.ProcessGroup`
like ``tickvault run``'s processes, each in a session of its own):

* **disjoint shards**: the daemon's shard ``k/n`` (``--shard``, default 1/1) is refined N ways:
  worker i owns shard ``k+n·(i−1)`` of ``n·N`` (:func:`~collector_daemon.sharding.worker_shard`),
  so the workers' instruments are disjoint and together exactly the daemon's;
* **venue-wide duties in worker 1 only**: the chain-wide channels (Deribit's
  ``trades.{kind}.{currency}``: their trades, sequence gaps and REST recovery) and writing the
  universe table from REST; workers 2..N read the universe from the table (``NOTIFY`` brings
  changes) and subscribe only per-instrument channels;
* **budgets divided**: each worker gets ``max_connections // N`` sockets and
  ``rest_max_concurrency // N`` REST connections (at least 1; the venue's connections-per-IP
  check counts them all) and 1/N of the subscribe rate;
* **one spool each**: the spool directory is named after the shard, so each worker has its own
  (locked) spool;
* **one status**: each worker heartbeats its own ``collector_status`` row
  ``<collector_id>/worker<i>`` (``tickvault status`` lists them all);
* **one metrics endpoint**: the supervisor's ``/metrics`` scrapes the workers' (each on a
  private loopback port) and sums them (:class:`WorkersMetrics`); ``/healthz`` is 200 when every
  worker runs and answers 200;
* **restart with back-off**: a worker that exits while the daemon is not stopping is restarted
  after the reconnect back-off (``backoff_min_s``..``backoff_max_s``, exponential with jitter;
  back to the minimum after it ran :data:`RESTART_RESET_S`). Its lost window is recorded in
  ``data_gaps`` (``detected_by = 'worker_exit'``, instrument ``*``, one row per stream it stored):
  from the newest exchange time its last heartbeat says was committed to the newest its
  replacement's first heartbeat says it committed (both conservative: the window may cover up
  to a heartbeat interval of rows that were stored); when the daemon stops before that, to now;
* **clean shutdown**: SIGTERM/SIGINT to the supervisor sends SIGTERM to every worker at once;
  each flushes (or spools) as a single collector does; a worker still running after
  :data:`WORKER_STOP_GRACE_S` is killed. A worker whose supervisor disappears (SIGKILL) stops
  itself (:func:`follow_supervisor`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from collector_daemon.connection import backoff_delay
from collector_daemon.gaps import window_gap
from collector_daemon.metrics import MetricsServer
from collector_daemon.settings import Settings
from collector_daemon.sharding import worker_shard
from collector_daemon.supervisor import STOP_GRACE_S, Child, ProcessGroup

log = logging.getLogger("tickvault.workers")

#: Seconds the workers get after SIGTERM before they are killed: within ``tickvault run``'s own
#: grace, so that a ``run`` stopping this supervisor never leaves a worker behind.
WORKER_STOP_GRACE_S = STOP_GRACE_S - 0.5
#: A worker that ran this long (s) before exiting restarts after the shortest back-off again.
RESTART_RESET_S = 60.0
#: Seconds between checks of a restarted worker's heartbeat (to close its crash gap).
GAP_CHECK_S = 1.0
#: Where the workers serve their own /metrics and /healthz (to the supervisor only).
WORKER_METRICS_HOST = "127.0.0.1"
#: Seconds a scrape of one worker's /metrics or /healthz may take.
SCRAPE_TIMEOUT_S = 2.0
#: Gauges that add up across workers (the other gauges are the same fact seen by each worker,
#: or an age: the maximum is reported). ``tickvault_spooling`` sums to the workers spooling.
SUMMED_GAUGES = frozenset({"tickvault_queue_depth", "tickvault_spool_bytes", "tickvault_spooling",
                           "tickvault_gaps_pending", "tickvault_connected",
                           "tickvault_subscribed_channels"})


@dataclass
class Crash:
    """A worker's exit not yet recorded in ``data_gaps``.

    Attributes:
        start_us: the newest exchange_ts (µs, UTC) its last heartbeat said was committed.
        tables: the stream tables it had stored rows of.
        exited_at: wall clock of the exit (s since the epoch).
        code: its exit code (negative: the signal that ended it).
    """

    start_us: int
    tables: list[str]
    exited_at: float
    code: int


@dataclass
class Worker:
    """One worker process of the daemon: index ``i`` (1..N), its shard ``(k, n)``, its
    ``collector_status`` id and private metrics port (None: metrics off)."""

    index: int
    shard: tuple[int, int]
    collector_id: str
    metrics_port: int | None
    child: Child
    restarts: int = 0
    attempt: int = 0                 # exits in a row that ran < RESTART_RESET_S (back-off exponent)
    started: float = 0.0             # monotonic time of the last start
    restart_at: float | None = None  # monotonic time of the pending restart
    crash: Crash | None = None

    def running(self) -> bool:
        """True while its process runs."""
        return self.child.process is not None and self.child.process.poll() is None


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def collect_options(args: argparse.Namespace) -> list[str]:
    """The ``collect`` options of ``args`` that every worker gets (``--shard`` and
    ``--workers`` are the supervisor's: each worker gets its own shard by environment)."""
    out: list[str] = []
    for option, value in (("--venue", args.venue), ("--currency", args.currency),
                          ("--kind", args.kind), ("--top-n", args.top_n)):
        if value is not None:
            out += [option, str(value)]
    return out


class Workers:
    """The supervisor of ``settings.workers`` collector processes (see the module doc).

    Args:
        settings: the daemon's settings (validated; ``workers`` >= 1, ``shard`` = the daemon's).
        options: ``collect`` options passed to every worker (:func:`collect_options`).
    """

    def __init__(self, settings: Settings, options: list[str]) -> None:
        from collector_daemon.venues import get_venue
        self.settings = settings
        self.venue = get_venue(settings.venue)
        self.streams = {s.table.name: s for s in self.venue.streams(settings.venue_settings)}
        base_id = settings.collector_id or f"{socket.gethostname()}:{os.getpid()}"
        n = settings.workers
        self.workers = [
            Worker(i, worker_shard(settings.shard_index, i, n), f"{base_id}/worker{i}",
                   _free_port(WORKER_METRICS_HOST) if settings.metrics_port is not None else None,
                   Child(f"worker{i}", [sys.executable, "-m", "collector_daemon.cli", "collect",
                                        *options, "--worker", f"{i}/{n}"]))
            for i in range(1, n + 1)]
        self.processes = ProcessGroup()
        self.stopping = threading.Event()
        self._metrics: MetricsServer | None = None

    def env(self, worker: Worker) -> dict[str, str]:
        """The environment variables that make a worker: its shard, status id, metrics port and
        share of the connection budgets."""
        sockets, rest = self.settings.per_worker()
        k, n = worker.shard
        return {"TICKVAULT_SHARD": f"{k}/{n}", "TICKVAULT_WORKERS": "1",
                "TICKVAULT_COLLECTOR_ID": worker.collector_id,
                "TICKVAULT_MAX_CONNECTIONS": str(sockets), "TICKVAULT_REST_MAX_CONCURRENCY": str(rest),
                "TICKVAULT_METRICS_HOST": WORKER_METRICS_HOST,
                "TICKVAULT_METRICS_PORT": "" if worker.metrics_port is None else str(worker.metrics_port)}

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        """Start the workers, restart those that exit, until SIGTERM/SIGINT; then stop them all
        and record what is left of their crash gaps. Returns the exit code (0)."""
        def on_signal(signum, _frame) -> None:
            log.info("%s received: stopping the workers", signal.Signals(signum).name)
            self.stopping.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start_metrics()
            k, n = self.settings.shard_index
            log.info("%d workers over shard %d/%d: %s", len(self.workers), k, n,
                     ", ".join(f"worker{w.index} = shard {w.shard[0]}/{w.shard[1]}" for w in self.workers))
            for worker in self.workers:
                self.processes.add(worker.child, self.env(worker))
                worker.started = time.monotonic()
            next_check = time.monotonic() + GAP_CHECK_S
            while not self.stopping.wait(0.2):
                for worker in self.workers:
                    if worker.restart_at is None and not worker.running():
                        self._exited(worker)
                    elif worker.restart_at is not None and time.monotonic() >= worker.restart_at:
                        worker.restart_at = None
                        worker.restarts += 1
                        self.processes.start(worker.child, self.env(worker))
                        worker.started = time.monotonic()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + GAP_CHECK_S
                    self.record_gaps()
        finally:
            self.processes.stop(WORKER_STOP_GRACE_S)
            self.record_gaps(final=True)
            if self._metrics is not None:
                self._metrics.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _exited(self, worker: Worker) -> None:
        """A worker ended by itself: note its crash gap, schedule its restart."""
        code = worker.child.process.returncode
        ran = time.monotonic() - worker.started
        if ran >= RESTART_RESET_S:
            worker.attempt = 0
        delay = backoff_delay(worker.attempt, self.settings.backoff_min_s, self.settings.backoff_max_s)
        worker.attempt += 1
        worker.restart_at = time.monotonic() + delay
        log.error("worker%d (%s) exited with code %s after %.0f s: restarting it in %.1f s",
                  worker.index, worker.collector_id, code, ran, delay)
        if worker.crash is not None:      # died again before its gap was closed: keep the start
            return
        try:
            status = self._status(worker)
        except Exception as exc:  # noqa: BLE001 - the restart must not wait for the database
            log.error("worker%d: its last heartbeat could not be read (%r): no gap recorded",
                      worker.index, exc)
            return
        stats = status[0] if status else {}
        start_us = int(stats.get("committed_exchange_us") or 0)
        tables = [t for t in (stats.get("rows_written") or {}) if t in self.streams]
        if not start_us or not tables:
            log.warning("worker%d had committed no row by its last heartbeat: no gap to record",
                        worker.index)
            return
        worker.crash = Crash(start_us, tables, time.time(), code)

    # ------------------------------------------------------------------ gaps
    def _status(self, worker: Worker) -> tuple[dict, int] | None:
        """``(stats, started_at µs)`` of the worker's ``collector_status`` row, None without one.

        Raises:
            psycopg.Error: the database cannot be reached.
        """
        import psycopg
        with psycopg.connect(self.settings.database_url.get_secret_value(), connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT stats, (extract(epoch FROM started_at) * 1e6)::bigint FROM collector_status "
                "WHERE collector_id = %s", (worker.collector_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def record_gaps(self, final: bool = False) -> None:
        """Record the crash gap of every restarted worker whose replacement has committed rows
        (its heartbeat's ``committed_exchange_us``); with ``final`` (the daemon stops), every
        gap still open, ending now at the latest. A database error leaves them for the next try
        (logged)."""
        import psycopg

        from collector_daemon.core.gaps import insert_gaps_sync
        for worker in self.workers:
            crash = worker.crash
            if crash is None:
                continue
            try:
                status = self._status(worker)
                end_us = None
                if status and status[1] > crash.exited_at * 1e6:
                    resumed = int(status[0].get("committed_exchange_us") or 0)
                    end_us = resumed if resumed > crash.start_us else None
                if end_us is None and final:
                    end_us = max(crash.start_us, time.time_ns() // 1000)
                if end_us is None:
                    continue
                k, n = worker.shard
                why = (f"{worker.collector_id} (shard {k}/{n}, its instruments only) exited with "
                       f"code {crash.code} and was restarted")
                gaps = [window_gap(self.venue.name, self.streams[t], crash.start_us, end_us,
                                   "worker_exit", why) for t in crash.tables]
                with psycopg.connect(self.settings.database_url.get_secret_value(),
                                     connect_timeout=5) as conn:
                    insert_gaps_sync(conn, gaps)
                worker.crash = None
                log.warning("worker%d: gap recorded for %s, exchange time %d..%d µs (%.1f s)",
                            worker.index, ", ".join(g.stream for g in gaps), crash.start_us, end_us,
                            (end_us - crash.start_us) / 1e6)
            except Exception as exc:  # noqa: BLE001 - tried again at the next check
                log.error("worker%d: crash gap not recorded yet: %r", worker.index, exc)

    # ------------------------------------------------------------------ metrics
    def _start_metrics(self) -> None:
        if self.settings.metrics_port is None:
            return
        self._metrics = MetricsServer(WorkersMetrics(self), self.health, self.settings.metrics_host,
                                      self.settings.metrics_port)
        self._metrics.start()
        log.info("metrics of the %d workers on http://%s:%d/metrics and /healthz", len(self.workers),
                 self.settings.metrics_host, self._metrics.port)

    def scrape(self, worker: Worker, path: str) -> tuple[int, bytes] | None:
        """``(HTTP status, body)`` of a running worker's ``path`` on its metrics port; None when
        it does not run or does not answer within :data:`SCRAPE_TIMEOUT_S`."""
        if worker.metrics_port is None or not worker.running():
            return None
        url = f"http://{WORKER_METRICS_HOST}:{worker.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:  # noqa: S310 - loopback
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return None

    def health(self) -> tuple[bool, dict]:
        """``/healthz``: ok when every worker runs and its own ``/healthz`` answers 200;
        detail per worker: its pid, restarts and health (None: not answering)."""
        detail, ok = {}, True
        for worker in self.workers:
            answer = self.scrape(worker, "/healthz")
            healthy = answer is not None and answer[0] == 200
            ok = ok and healthy
            detail[f"worker{worker.index}"] = {
                "pid": worker.child.process.pid if worker.running() else None,
                "restarts": worker.restarts,
                "health": json.loads(answer[1]) if answer is not None else None}
        return ok, detail


class WorkersMetrics:
    """A prometheus-client collector: every worker's ``/metrics`` scraped at scrape time and
    combined per sample (same name and labels): counters, the summaries' ``_count``/``_sum``
    and the :data:`SUMMED_GAUGES` are summed; other gauges (ages, database facts every worker
    reads alike, the spool's filesystem) and latency quantiles give the maximum (the worst
    worker; NaN ignored). Adds ``tickvault_workers``, ``tickvault_workers_running`` and
    ``tickvault_worker_restarts_total`` (label ``venue``)."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def collect(self):
        """The combined families (see the class doc)."""
        families: dict[str, tuple[str, str, dict[tuple, list[float]]]] = {}
        for worker in self.workers.workers:
            answer = self.workers.scrape(worker, "/metrics")
            if answer is None or answer[0] != 200:
                continue
            for family in text_string_to_metric_families(answer[1].decode()):
                samples = families.setdefault(family.name, (family.type, family.documentation, {}))[2]
                for s in family.samples:
                    samples.setdefault((s.name, tuple(sorted(s.labels.items()))), []).append(s.value)
        for name, (kind, doc, samples) in families.items():
            metric = Metric(name, doc, kind)
            for (sample, labels), values in samples.items():
                metric.add_sample(sample, dict(labels), _combine(name, kind, sample, values))
            yield metric
        venue = self.workers.venue.name
        for name, help_, value in (
                ("tickvault_workers", "Collector worker processes configured (--workers)",
                 len(self.workers.workers)),
                ("tickvault_workers_running", "Collector worker processes running",
                 sum(w.running() for w in self.workers.workers))):
            g = GaugeMetricFamily(name, help_, labels=["venue"])
            g.add_metric([venue], value)
            yield g
        c = CounterMetricFamily("tickvault_worker_restarts", "Worker processes restarted after "
                                "exiting by themselves", labels=["venue"])
        c.add_metric([venue], sum(w.restarts for w in self.workers.workers))
        yield c


def _combine(family: str, kind: str, sample: str, values: list[float]) -> float:
    if kind == "counter" or family in SUMMED_GAUGES or (
            kind == "summary" and sample.endswith(("_count", "_sum"))):
        return math.fsum(values)
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def follow_supervisor() -> None:
    """In a worker: SIGTERM itself (the clean stop) when its supervisor is gone (the parent
    changes: killed by SIGKILL, or crashed), checked every second in a daemon thread."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.error("the worker supervisor (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="follow-supervisor", daemon=True).start()


def parse_worker(value: str) -> tuple[int, int]:
    """``--worker i/N`` -> ``(i, N)``.

    Raises:
        argparse.ArgumentTypeError: not ``i/N`` with 1 <= i <= N.
    """
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--worker must be i/N, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError("--worker i/N needs 1 <= i <= N")
    return i, n


"""Counters of a running collector, exported to Prometheus and summarised in the stats log line.

The hot path only increments plain integers on :class:`Stats`; a custom Prometheus collector
reads them at scrape time, so metrics cost nothing per message. ``/metrics`` and ``/healthz`` are
served on a loopback port (``TICKVAULT_METRICS_PORT``).

Besides the process's own counters, ``/metrics`` reports what the alert rules and the dashboard
(``deploy/prometheus``, ``deploy/grafana``) need from outside the process: the free space of the
spool's filesystem (``os.statvfs`` at scrape time) and, from the database, the open gaps and the
newest verified Parquet export per table (read by :func:`refresh_database_facts` on the
collector's heartbeat, so a scrape never waits on the database).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector_daemon.storage import queries

#: Quantiles of the latency summaries (exported as ``quantile`` labels).
LATENCY_QUANTILES = (0.5, 0.99)


class LatencySample:
    """A bounded uniform sample of latencies (ms) for percentiles over one stats interval."""

    def __init__(self, capacity: int = 20_000, seed: int | None = None) -> None:
        self.capacity = capacity
        self.values: list[float] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add_many(self, values: list[float]) -> None:
        """Reservoir-sample ``values`` (Vitter's algorithm R)."""
        for v in values:
            self.seen += 1
            if len(self.values) < self.capacity:
                self.values.append(v)
            else:
                j = self._rng.randrange(self.seen)
                if j < self.capacity:
                    self.values[j] = v

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0..1) of the sample, or None when empty."""
        if not self.values:
            return None
        ordered = sorted(self.values)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # nearest-rank

    def reset(self) -> None:
        self.values.clear()
        self.seen = 0


@dataclass
class Stats:
    """Live counters of one collector process (all monotonic except the gauges)."""

    venue: str
    started_at: float = field(default_factory=time.time)
    messages: int = 0
    rejected: int = 0
    reconnects: int = 0
    refused_channels: int = 0
    rows_received: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, int] = field(default_factory=dict)
    rows_duplicate: dict[str, int] = field(default_factory=dict)
    db_retries: int = 0
    connected: int = 0
    subscribed_channels: Callable[[], int] = lambda: 0
    queue_depth: Callable[[], int] = lambda: 0
    #: the pipeline's ``spool_stats()``: bytes/spooling gauges and spool counters
    spool: Callable[[], dict[str, int]] = dict
    #: gaps found but not stored yet (the database is unavailable)
    gaps_pending: Callable[[], int] = lambda: 0
    #: per account label: the state of its private session (``AccountKeeper.status``)
    accounts: Callable[[], dict[str, dict]] = dict
    last_write_at: float = 0.0
    last_frame_us: int = 0
    #: the newest exchange_ts (µs) among the rows committed so far (a crashed worker's gap
    #: starts there: :mod:`collector_daemon.workers`)
    committed_exchange_us: int = 0
    exchange_latency: LatencySample = field(default_factory=LatencySample)
    commit_latency: LatencySample = field(default_factory=LatencySample)
    #: the spool's directory: its filesystem's free and total bytes are exported (None: not shown)
    spool_dir: Path | None = None
    #: open gaps of this venue per stream: (count, oldest detected_at in s since epoch or None);
    #: None until :func:`refresh_database_facts` has read them
    open_gaps: dict[str, tuple[int, float | None]] | None = None
    #: per exported table, the start (UTC midnight, s since epoch) of the newest day whose export
    #: of this venue is verified; None until :func:`refresh_database_facts` has read it
    export_verified_days: dict[str, float] | None = None

    def snapshot(self) -> dict:
        """JSON-able summary (used by the stats log line and collector_status.stats)."""
        def pct(sample: LatencySample, q: float) -> float | None:
            v = sample.percentile(q)
            return None if v is None else round(v, 1)
        return {
            "messages": self.messages, "rejected": self.rejected, "reconnects": self.reconnects,
            "refused_channels": self.refused_channels,
            "rows_received": dict(self.rows_received), "rows_written": dict(self.rows_written),
            "rows_duplicate": dict(self.rows_duplicate), "db_retries": self.db_retries,
            "queue_depth": self.queue_depth(), "connected": self.connected,
            "subscribed_channels": self.subscribed_channels(),
            "spool": self.spool(), "gaps_pending": self.gaps_pending(), "accounts": self.accounts(),
            "exchange_to_receive_ms_p50": pct(self.exchange_latency, 0.5),
            "exchange_to_receive_ms_p99": pct(self.exchange_latency, 0.99),
            "receive_to_commit_ms_p50": pct(self.commit_latency, 0.5),
            "receive_to_commit_ms_p99": pct(self.commit_latency, 0.99),
            "committed_exchange_us": self.committed_exchange_us,
        }


class _StatsCollector:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self):
        s = self.stats
        labels = ["venue"]
        yield _counter("tickvault_messages", "Market-data notifications received", labels, [([s.venue], s.messages)])
        yield _counter("tickvault_rejected_messages", "Frames rejected (kept in rejected_messages)", labels, [([s.venue], s.rejected)])
        yield _counter("tickvault_reconnects", "WebSocket reconnects", labels, [([s.venue], s.reconnects)])
        yield _counter("tickvault_refused_channels", "Channels the exchange refused to subscribe", labels, [([s.venue], s.refused_channels)])
        yield _counter("tickvault_db_retries", "Transient database errors retried", labels, [([s.venue], s.db_retries)])
        for name, help_, values in (
            ("tickvault_rows_received", "Rows decoded per table", s.rows_received),
            ("tickvault_rows_written", "Rows inserted per table", s.rows_written),
            ("tickvault_rows_duplicate", "Rows already stored (insert-if-absent skipped them)", s.rows_duplicate),
        ):
            yield _counter(name, help_, ["venue", "table"], [([s.venue, t], v) for t, v in values.items()])
        g = GaugeMetricFamily("tickvault_queue_depth", "Sealed batches waiting for the writer", labels=labels)
        g.add_metric([s.venue], s.queue_depth())
        yield g
        spool = s.spool()
        for key, name, help_ in (
            ("bytes", "tickvault_spool_bytes", "Bytes in the durable spool"),
            ("spooling", "tickvault_spooling", "1 while batches go to the spool (database unavailable or draining)"),
        ):
            g = GaugeMetricFamily(name, help_, labels=labels)
            g.add_metric([s.venue], spool.get(key, 0))
            yield g
        for key, name, help_ in (
            ("batches_spooled", "tickvault_spooled_batches", "Batches appended to the spool"),
            ("rows_spooled", "tickvault_spooled_rows", "Rows appended to the spool"),
            ("rows_drained", "tickvault_spool_drained_rows", "Spooled rows replayed into the database"),
            ("rows_dropped", "tickvault_spool_dropped_rows", "Rows dropped at the spool cap (recorded in data_gaps)"),
            ("corrupt_records", "tickvault_spool_corrupt_records", "Corrupt spool records quarantined, not replayed"),
            ("corrupt_bytes", "tickvault_spool_corrupt_bytes", "Bytes of corrupt spool records quarantined"),
        ):
            yield _counter(name, help_, labels, [([s.venue], spool.get(key, 0))])
        g = GaugeMetricFamily("tickvault_gaps_pending", "Gaps found but not stored yet (database unavailable)", labels=labels)
        g.add_metric([s.venue], s.gaps_pending())
        yield g
        g = GaugeMetricFamily("tickvault_connected", "Open WebSocket connections", labels=labels)
        g.add_metric([s.venue], s.connected)
        yield g
        g = GaugeMetricFamily("tickvault_subscribed_channels", "Channels confirmed by the exchange", labels=labels)
        g.add_metric([s.venue], s.subscribed_channels())
        yield g
        g = GaugeMetricFamily("tickvault_last_message_age_seconds", "Seconds since the last frame", labels=labels)
        g.add_metric([s.venue], time.time() - s.last_frame_us / 1e6 if s.last_frame_us else float("nan"))
        yield g
        for name, sample in (("tickvault_exchange_to_receive_ms", s.exchange_latency),
                             ("tickvault_receive_to_commit_ms", s.commit_latency)):
            yield _latency_summary(name, s.venue, sample)
        yield from _spool_filesystem(s)
        yield from _database_facts(s)


def _latency_summary(name: str, venue: str, sample: LatencySample) -> Metric:
    """A summary of the current stats interval's latency sample (ms): count, sum and the
    ``LATENCY_QUANTILES`` (NaN while the sample is empty, e.g. just after the interval reset)."""
    m = Metric(name, "Latency sample of the current stats interval (ms)", "summary")
    for q in LATENCY_QUANTILES:
        value = sample.percentile(q)
        m.add_sample(name, {"venue": venue, "quantile": str(q)}, math.nan if value is None else value)
    m.add_sample(f"{name}_count", {"venue": venue}, len(sample.values))
    m.add_sample(f"{name}_sum", {"venue": venue}, sum(sample.values))
    return m


def _spool_filesystem(s: Stats):
    """Free and total bytes of the filesystem holding the spool (``os.statvfs``; nothing when
    the spool directory is unknown or unreadable)."""
    if s.spool_dir is None:
        return
    try:
        fs = os.statvfs(s.spool_dir)
    except OSError:
        return
    for name, help_, value in (
        ("tickvault_spool_filesystem_avail_bytes",
         "Bytes available to the collector on the spool's filesystem", fs.f_bavail * fs.f_frsize),
        ("tickvault_spool_filesystem_size_bytes",
         "Size of the spool's filesystem in bytes", fs.f_blocks * fs.f_frsize),
    ):
        g = GaugeMetricFamily(name, help_, labels=["venue"])
        g.add_metric([s.venue], value)
        yield g


def _database_facts(s: Stats):
    """Open gaps and export freshness as last read from the database (nothing before the
    first read)."""
    if s.open_gaps is not None:
        count = GaugeMetricFamily("tickvault_open_gaps", "Open data_gaps rows (not yet backfilled "
                                  "or declared unrecoverable)", labels=["venue", "stream"])
        age = GaugeMetricFamily("tickvault_open_gap_oldest_age_seconds", "Seconds since the oldest "
                                "open gap was detected (0 when none is open)", labels=["venue", "stream"])
        now = time.time()
        for stream in queries.GAP_STREAMS:
            n, oldest = s.open_gaps.get(stream, (0, None))
            count.add_metric([s.venue, stream], n)
            age.add_metric([s.venue, stream], max(0.0, now - oldest) if oldest is not None else 0.0)
        yield count
        yield age
    if s.export_verified_days is not None:
        g = GaugeMetricFamily("tickvault_export_verified_day_timestamp_seconds",
                              "Start (UTC midnight, s since epoch) of the newest day whose Parquet "
                              "export is verified (export_manifest.verified_at set)",
                              labels=["venue", "table"])
        for table, day_start in sorted(s.export_verified_days.items()):
            g.add_metric([s.venue, table], day_start)
        yield g


async def refresh_database_facts(stats: Stats, conn: asyncpg.Connection) -> None:
    """Read the open gaps and the export freshness of ``stats.venue`` into ``stats`` (two small
    indexed queries, see :mod:`collector_daemon.storage.queries`); meant for the collector's
    periodic heartbeat, on the heartbeat's connection.

    Raises:
        asyncpg errors: the database is unreachable (``stats`` keeps the previous values).
    """
    open_gaps = await queries.open_gaps(conn, stats.venue)
    verified = await queries.export_verified_days(conn, stats.venue)
    stats.open_gaps, stats.export_verified_days = open_gaps, verified


def _counter(name: str, help_: str, labels: list[str], values) -> CounterMetricFamily:
    c = CounterMetricFamily(name, help_, labels=labels)
    for label_values, value in values:
        c.add_metric(label_values, value)
    return c


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` on ``host:port`` in a daemon thread.

    Args:
        stats: the collector's counters, or any prometheus-client collector (an object whose
            ``collect()`` yields metric families: the worker supervisor's aggregate).
        healthy: returns ``(ok, detail)``; ``/healthz`` answers 200 or 503 with the detail as JSON.
    """

    def __init__(self, stats: Stats | object, healthy: Callable[[], tuple[bool, dict]],
                 host: str = "127.0.0.1", port: int = 0) -> None:
        registry = CollectorRegistry()
        registry.register(_StatsCollector(stats) if isinstance(stats, Stats) else stats)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path == "/metrics":
                    body, code, ctype = generate_latest(registry), 200, "text/plain; version=0.0.4"
                elif self.path == "/healthz":
                    ok, detail = healthy()
                    body, code, ctype = json.dumps(detail).encode(), (200 if ok else 503), "application/json"
                else:
                    body, code, ctype = b"not found\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

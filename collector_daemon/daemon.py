"""The collector process: universe -> connection(s) -> pipeline -> writer, with stats, metrics,
a collector_status heartbeat and a clean shutdown.

Shutdown (SIGTERM/SIGINT, or the end of a replay) runs in this order so the tail is never lost:
stop reading the sockets, flush every buffered and queued batch, write the last heartbeat, and
only then close the database pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg
from aiolimiter import AsyncLimiter

from collector_daemon import __version__
from collector_daemon.connection import Connection, Watchdog
from collector_daemon.gaps import GapKeeper
from collector_daemon.sharding import assign, shard_of
from collector_daemon.metrics import MetricsServer, Stats
from collector_daemon.pipeline import Pipeline
from collector_daemon.rows import QUOTES, TRADES, TableSpec
from collector_daemon.settings import Settings
from collector_daemon.storage import queries
from collector_daemon.storage.spool import Spool
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues.deribit.protocol import DeribitProtocol
from collector_daemon.venues.deribit.rest import DeribitRest
from collector_daemon.venues.deribit.universe import fetch_universe

log = logging.getLogger(__name__)

#: Deribit's subscribe credit: burst 10, refill ~3.3/s (docs.deribit.com/articles/rate-limits).
SUBSCRIBE_BURST, SUBSCRIBE_PERIOD_S = 10, 3.0


@dataclass
class Summary:
    """What a collector run did (printed by ``tickvault collect --replay``)."""

    elapsed_s: float
    messages: int
    rows_received: dict[str, int]
    rows_written: dict[str, int]
    rows_duplicate: dict[str, int]
    rejected: int
    reconnects: int

    def lines(self) -> list[str]:
        out = [f"elapsed: {self.elapsed_s:.2f} s, notifications: {self.messages}, "
               f"rejected frames: {self.rejected}, reconnects: {self.reconnects}"]
        for table in sorted(set(self.rows_written) | set(self.rows_received)):
            n, dup = self.rows_written.get(table, 0), self.rows_duplicate.get(table)
            got = self.rows_received.get(table)
            out.append(f"  {table}: {n} rows written"
                       + (f" of {got} received" if got is not None else "")
                       + (f", {dup} already stored" if dup else ""))
        return out


class Collector:
    """One collector process: one venue, one or more currencies and kinds, one shard of the
    universe, spread over as many WebSocket connections as the subscription set needs.

    Args:
        settings: configuration (database URL, universe, sharding, batching, backoff, metrics).
        ws_url / rest_url: override the venue endpoints (the emulator in replay mode).
        stop_on_replay_end: finish when the server ends the replay (``collect --replay``).
        fresh_universe: take the first universe from REST and write it to the table even when
            the table holds one (``collect --replay``: the emulator is another world).
    """

    def __init__(self, settings: Settings, *, ws_url: str | None = None, rest_url: str | None = None,
                 stop_on_replay_end: bool = False, fresh_universe: bool = False) -> None:
        self.settings = settings
        self.protocol = DeribitProtocol(settings.currencies, settings.kinds, heartbeat_s=settings.heartbeat_s)
        self.ws_url = ws_url or settings.deribit_ws_url
        self.rest_url = rest_url or settings.deribit_rest_url
        self.stop_on_replay_end = stop_on_replay_end
        self.fresh_universe = fresh_universe
        k, n = settings.shard_index
        self.tag = "-".join([self.protocol.name, *(c.lower() for c in settings.currencies)]
                            + ([f"shard{k}of{n}"] if n > 1 else []))
        self.collector_id = settings.collector_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stats = Stats(venue=self.protocol.name)
        self.writer = BatchWriter(settings.database_url.get_secret_value(), venue=self.protocol.name,
                                  on_retry=self._on_db_retry, write_timeout_s=settings.write_timeout_s)
        self.spool = Spool(settings.spool_dir / self.tag, max_bytes=settings.spool_max_bytes)
        self.pipeline = Pipeline(self.writer.write, batch_rows=settings.batch_rows,
                                 flush_interval_s=settings.flush_interval_s,
                                 queue_batches=settings.queue_batches, on_written=self._on_written,
                                 spool=self.spool)
        self.stats.queue_depth = lambda: self.pipeline.queue_depth
        self.stats.spool = self.pipeline.spool_stats
        self.stats.gaps_pending = lambda: self.gaps.pending if self.gaps is not None else 0
        self.stats.rows_written = self.writer.rows_written        # the writer's own counters,
        self.stats.rows_duplicate = self.writer.rows_duplicate    # updated in place per batch
        self._limiter = AsyncLimiter(SUBSCRIBE_BURST, SUBSCRIBE_PERIOD_S)  # shared by all sockets
        self._watchdog = Watchdog(settings.silence_reconnect_s, {
            QUOTES.name: (settings.quotes_stale_warn_s, settings.quotes_stale_reconnect_s),
            TRADES.name: (settings.trades_stale_warn_s, None)})
        self.gaps: GapKeeper | None = None    # needs the pool: created in run()
        self._give_up = threading.Event()     # set when shutdown_recovery_s has passed
        self.connections: list[Connection] = []
        self._conn_tasks: list[asyncio.Task] = []
        self._running = False
        self.stats.subscribed_channels = lambda: sum(len(c.subscribed) for c in self.connections)
        #: the subscription set per currency, highest open interest first (before sharding)
        self.universe: dict[str, list[str]] = {}
        self._unserved_warned: set[str] = set()  # currencies warned about a set not serving us
        self.selected: list[str] = []        # this shard's instruments
        self.channels: list[str] = []        # this shard's channels
        self._alive: tuple[int, ...] = ()
        self._stop = asyncio.Event()
        self._metrics: MetricsServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        """Ask the collector to shut down cleanly (signal handlers call this)."""
        self._stop.set()

    async def run(self) -> Summary:
        """Run until stopped (signal or end of replay); returns what was collected.

        Raises:
            collector_daemon.venues.deribit.rest.DeribitRestError: the first universe fetch failed.
            asyncpg errors that are not transient (e.g. the schema is missing).
        """
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        await self.writer.open()
        self.pipeline.start()
        self._start_metrics()
        self.gaps = GapKeeper(self.protocol.name, self.writer.pool, self._recover, spool=self.spool,
                              write_timeout_s=self.settings.write_timeout_s)
        seeded = await self.gaps.seed()
        log.info("trade_seq tracking seeded for %d instruments", seeded)
        async with DeribitRest(self.rest_url, max_concurrency=self.settings.rest_max_concurrency) as rest:
            await self._refresh_universe(rest)
            self._running = True
            for conn in self.connections:
                self._conn_tasks.append(asyncio.create_task(conn.run(), name=conn.connection_id))
            side_tasks = [asyncio.create_task(self._universe_loop(rest), name="universe"),
                          asyncio.create_task(self._supervise(), name="supervise"),
                          gaps_task := self.gaps.start(),
                          asyncio.create_task(self._stats_loop(), name="stats"),
                          asyncio.create_task(self._status_loop(), name="status")]
            stop_task = asyncio.create_task(self._stop.wait(), name="stop")
            ended_task = asyncio.create_task(self._connections_ended(), name="connections-ended")
            writer_task = self.pipeline.writer_task
            done, _ = await asyncio.wait([stop_task, ended_task, writer_task, *side_tasks],
                                         return_when=asyncio.FIRST_COMPLETED)
            failed: BaseException | None = None
            for task in done:  # a crashed writer/side task is fatal: surface it after flushing
                if task is not stop_task and not task.cancelled() and task.exception():
                    failed = failed or task.exception()
                    log.error("task %s failed: %r", task.get_name(), task.exception())
            for task in self._conn_tasks:   # a connection task ends only at a replay's end
                if task.done() and not task.cancelled() and task.exception() is not None:
                    failed = failed or task.exception()
                    log.error("connection task %s failed", task.get_name(), exc_info=task.exception())
            log.info("shutting down: stop reading, flush, then close the database pool")
            for conn in self.connections:
                await conn.stop()
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
            # the gap keeper is not cancelled: a recovery in flight is finished below
            others = [t for t in (*side_tasks, stop_task, ended_task) if t is not gaps_task]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        if writer_task.done() and not writer_task.cancelled() and writer_task.exception():
            raise writer_task.exception()
        await self.pipeline.close()
        for conn in self.connections:
            conn.close_pending_window()
        # record the gaps found at the very end and recover what REST can in shutdown_recovery_s;
        # then the recovery gives up (within ~0.2 s) and leaves the rest open for Dagster
        give_up = asyncio.get_running_loop().call_later(self.settings.shutdown_recovery_s,
                                                        self._give_up.set)
        try:
            await self.gaps.close()
        except Exception as exc:  # noqa: BLE001 - open gaps are left to the Dagster backfill
            log.error("gaps at shutdown not fully recorded/recovered: %r", exc)
        finally:
            give_up.cancel()
        try:
            await self._heartbeat(stopped=True)
        except Exception as exc:  # noqa: BLE001 - the status row only; the data is flushed
            log.warning("collector_status: could not record the shutdown: %s", exc)
        await self.writer.close()
        if self._metrics is not None:
            self._metrics.stop()
        self._log_stats()
        if failed is not None:
            raise RuntimeError(f"collector stopped by a failed task: {failed!r}") from failed
        return Summary(time.monotonic() - started, self.stats.messages,
                       dict(self.stats.rows_received), dict(self.writer.rows_written),
                       dict(self.writer.rows_duplicate), self.stats.rejected, self.stats.reconnects)

    async def _connections_ended(self) -> None:
        """Returns when the replay is over (live connections never end): every connection task
        has ended, or some connection saw the replay finish and none of the others is connected
        (one that cannot reconnect would otherwise keep a finished replay running)."""
        while True:
            tasks = list(self._conn_tasks)
            if tasks and all(t.done() for t in tasks):
                return
            if any(t.done() for t in tasks) and not any(
                    c.down_since is None for c, t in zip(self.connections, tasks) if not t.done()):
                return
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ connections
    def _connection(self, index: int) -> Connection:
        return Connection(
            self.protocol, self.ws_url, f"{self.tag}-{index}", self.pipeline, self.stats,
            self._limiter, backoff_min_s=self.settings.backoff_min_s,
            backoff_max_s=self.settings.backoff_max_s, stop_on_replay_end=self.stop_on_replay_end,
            refused_retry_s=self.settings.refused_retry_s, watchdog=self._watchdog,
            recv_buffer_bytes=self.settings.ws_recv_buffer_bytes,
            observers={TRADES.name: self._observe_trades}, on_lost_window=self._lost_window)

    def _live(self) -> tuple[int, ...]:
        """Indices of connections that are up or not down for longer than ``failover_s``."""
        now = time.monotonic()
        live = tuple(i for i, c in enumerate(self.connections)
                     if c.down_since is None or now - c.down_since < self.settings.failover_s)
        return live or tuple(range(len(self.connections)))

    async def _rebalance(self) -> None:
        """Spread ``self.channels`` over the live connections, opening connections as needed.
        Connections that gain channels are updated first, so a moved channel is subscribed on its
        new connection before it is dropped from the old one."""
        needed = min(self.settings.max_connections,
                     max(1, math.ceil(len(self.channels) / self.settings.channels_per_connection)))
        while len(self.connections) < needed:
            conn = self._connection(len(self.connections))
            self.connections.append(conn)
            if self._running:
                self._conn_tasks.append(asyncio.create_task(conn.run(), name=conn.connection_id))
        self._alive = self._live()
        plan = assign(self.channels, list(self._alive))
        for i in range(len(self.connections)):
            plan.setdefault(i, [])
        order = sorted(plan, key=lambda i: -len(set(plan[i]) - self.connections[i].subscribed))
        for i in order:
            await self.connections[i].set_channels(plan[i])

    async def _supervise(self) -> None:
        """Fail over: a connection down past ``failover_s`` hands its channels to the others;
        they move back when it is up again."""
        while True:
            await asyncio.sleep(1.0)
            live = self._live()
            if live != self._alive:
                for i in set(self._alive) - set(live):
                    log.error("%s down for over %.0f s: moving its channels to the other connections",
                              self.connections[i].connection_id, self.settings.failover_s)
                    self.connections[i].close_pending_window()
                await self._rebalance()

    # ------------------------------------------------------------------ periodic work
    async def _refresh_universe(self, rest: DeribitRest) -> None:
        """Load the subscription set of every currency, keep this shard's part, and spread it
        over the connections.

        The ``universe_versions`` table is authoritative (the Dagster ``instrument_universe``
        asset writes it hourly, announcing changes by NOTIFY). REST is the fallback:

        * no set for the venue and currency yet, nobody refreshed the table for
          ``universe_stale_s`` (no Dagster running), or the first refresh with
          ``fresh_universe``: fetch, and write the table as the asset
          would (same function);
        * a set that does not serve this collector's kinds or top N
          (:meth:`~orchestration.lib.universe.UniverseVersion.serves`): fetch and subscribe
          without writing, so the collector and Dagster do not overwrite each other's set.
        """
        from orchestration.lib.universe import apply_universe, read_universe
        venue, kinds, top_n = self.protocol.name, self.protocol.trade_kinds, self.settings.top_n
        universe: dict[str, list[str]] = {}
        for currency in self.settings.currencies:
            async with self.writer.pool.acquire() as conn:
                current = await read_universe(conn, venue, currency)
                last_refresh_us = await conn.fetchval(
                    "SELECT max(updated_at) FROM instruments WHERE venue = $1 AND base_currency = $2",
                    venue, currency)
            age_s = (time.time_ns() // 1000 - last_refresh_us) / 1e6 if last_refresh_us else None
            served = current.serves(kinds, top_n) if current is not None else None
            if current is None or age_s is None or age_s > self.settings.universe_stale_s or (
                    self.fresh_universe and not self.universe):
                if current is not None and age_s is not None and age_s > self.settings.universe_stale_s:
                    log.warning("universe %s: table last refreshed %.0f s ago (is Dagster's "
                                "instrument_universe schedule running?); refreshing it from REST",
                                currency, age_s)
                fetched = await fetch_universe(rest, currency, kinds, top_n=top_n)
                async with self.writer.pool.acquire() as conn:
                    refresh = await apply_universe(conn, fetched, venue=venue, currency=currency,
                                                   top_n=top_n, kinds=kinds)
                universe[currency], source = refresh.selected, f"REST, version {refresh.version}"
            elif served is None:
                if currency not in self._unserved_warned:
                    self._unserved_warned.add(currency)
                    log.warning("universe %s: universe_versions %d (kinds %s, top_n %s) does not serve "
                                "kinds %s, top_n %s; subscribing from REST without writing it (give "
                                "Dagster the same TICKVAULT_KIND and TICKVAULT_TOP_N)", currency,
                                current.version, ",".join(current.kinds or ["option"]),
                                current.top_n or "all", ",".join(kinds), top_n or "all")
                fetched = await fetch_universe(rest, currency, kinds, top_n=top_n)
                universe[currency], source = list(fetched.selected), "REST, not written"
            else:
                universe[currency], source = served, f"universe_versions {current.version}"
            if universe[currency] != self.universe.get(currency):
                log.info("universe %s (%s): %d instruments", currency, source, len(universe[currency]))
        self.universe = universe
        k, n = self.settings.shard_index
        selected = [name for names in universe.values() for name in names
                    if n == 1 or shard_of(name, n) == k]
        if selected != self.selected or not self.connections:
            self.selected = selected
            self.channels = self.protocol.channels_for(selected)
            log.info("subscribing %d instruments (shard %d/%d), %d channels", len(selected), k, n,
                     len(self.channels))
            await self._rebalance()

    async def _universe_loop(self, rest: DeribitRest) -> None:
        """Refresh on NOTIFY tickvault_universe (immediately) or every ``universe_refresh_s``."""
        from orchestration.lib.universe import UNIVERSE_CHANNEL
        changed = asyncio.Event()
        listener: asyncpg.Connection | None = None
        try:
            while True:
                if listener is None or listener.is_closed():
                    try:
                        listener = await asyncpg.connect(self.settings.database_url.get_secret_value())
                        await listener.add_listener(UNIVERSE_CHANNEL, lambda *_: changed.set())
                        changed.set()        # re-read: a change may have been missed meanwhile
                    except (OSError, asyncpg.PostgresError) as exc:
                        log.warning("universe listener not connected (%s); polling only", exc)
                        listener = None
                try:
                    await asyncio.wait_for(changed.wait(), self.settings.universe_refresh_s)
                except asyncio.TimeoutError:
                    pass
                changed.clear()
                try:
                    await self._refresh_universe(rest)
                except Exception as exc:  # noqa: BLE001 - keep the current set, try again later
                    log.warning("universe refresh failed, keeping the current set: %s", exc)
                    continue
                for conn in self.connections:
                    await conn.reconcile()  # also retries channels the exchange refused before
        finally:
            if listener is not None:
                await listener.close()

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval_s)
            self._log_stats()
            self.stats.exchange_latency.reset()
            self.stats.commit_latency.reset()

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval_s)
            try:
                await self._heartbeat()
            except Exception as exc:  # noqa: BLE001 - the heartbeat must never stop collection
                log.warning("collector_status heartbeat failed: %s", exc)

    async def _heartbeat(self, stopped: bool = False) -> None:
        async with self.writer.pool.acquire() as conn:
            await queries.heartbeat(conn, self.collector_id, self.protocol.name, socket.gethostname(),
                                    os.getpid(), __version__, int(self.stats.started_at * 1e6),
                                    self.stats.snapshot(), stopped=stopped)

    def _log_stats(self) -> None:
        s = self.stats.snapshot()
        log.info("stats: messages=%d rows=%s duplicates=%s rejected=%d queue=%d reconnects=%d "
                 "channels=%d exchange->receive p50/p99=%s/%s ms receive->commit p50/p99=%s/%s ms",
                 s["messages"], s["rows_written"], s["rows_duplicate"], s["rejected"],
                 s["queue_depth"], s["reconnects"], s["subscribed_channels"],
                 s["exchange_to_receive_ms_p50"], s["exchange_to_receive_ms_p99"],
                 s["receive_to_commit_ms_p50"], s["receive_to_commit_ms_p99"])

    # ------------------------------------------------------------------ callbacks
    def _on_written(self, table: TableSpec, rows: list[tuple], inserted: int, sealed_at: float) -> None:
        if table is QUOTES or table is TRADES:
            now_us = time.time_ns() // 1000
            ex, rx = table.columns.index("exchange_ts"), table.columns.index("receive_ts")
            sample = rows[::max(1, len(rows) // 200)]
            self.stats.exchange_latency.add_many([(r[rx] - r[ex]) / 1000 for r in sample])
            self.stats.commit_latency.add_many([(now_us - r[rx]) / 1000 for r in sample])

    def _observe_trades(self, rows: list[tuple]) -> None:
        if self.gaps is not None:
            self.gaps.observe_trades(rows)

    def _lost_window(self, connection_id: str, start_us: int, end_us: int | None,
                     tables: tuple[str, ...]) -> None:
        if self.gaps is not None:
            self.gaps.lost_window(connection_id, start_us, end_us, tables)

    async def _recover(self, gap_ids: list[int]) -> list[int]:
        """Resolve open trade gaps over REST with the shared backfill (in a worker thread);
        returns the ids left open because REST failed (the gap keeper tries them again)."""
        from orchestration.lib.backfill import RestConfig, backfill_gaps
        rest = RestConfig(self.rest_url, history_url=self.settings.deribit_history_url,
                          currency=",".join(self.protocol.currencies), kinds=self.protocol.trade_kinds,
                          max_concurrency=self.settings.rest_max_concurrency)
        # "now" for the 24 h horizon is the venue's clock as observed (the newest exchange
        # timestamp received): the wall clock live, the capture's clock in a replay
        venue_now_us = max((c.exchange_clock_us for c in self.connections), default=0) or time.time_ns() // 1000
        report = await asyncio.to_thread(
            backfill_gaps, self.settings.database_url.get_secret_value(), self.protocol.name, gap_ids,
            rest, now=datetime.fromtimestamp(venue_now_us / 1e6, timezone.utc), give_up=self._give_up)
        log.info("recovery: %d gap(s): %d backfilled, %d unrecoverable, %d open; %d trades fetched, "
                 "%d new", len(gap_ids), report.count("backfilled"), report.count("unrecoverable"),
                 report.count("open"), report.trades_fetched, report.trades_inserted)
        # (a recovery stopped by the shutdown is open too: the keeper no longer retries then)
        return [o.gap.gap_id for o in report.errors]

    def _on_db_retry(self, exc: BaseException) -> None:
        self.stats.db_retries += 1

    def _start_metrics(self) -> None:
        if self.settings.metrics_port is None:
            return
        self._metrics = MetricsServer(self.stats, self._health, self.settings.metrics_host,
                                      self.settings.metrics_port)
        self._metrics.start()
        log.info("metrics on http://%s:%d/metrics and /healthz", self.settings.metrics_host,
                 self._metrics.port)

    def _health(self) -> tuple[bool, dict]:
        age = time.time() - self.stats.last_frame_us / 1e6 if self.stats.last_frame_us else None
        ok = self.stats.connected > 0 and not self.pipeline.full
        return ok, {"connected": self.stats.connected, "last_message_age_s": age,
                    "queue_depth": self.pipeline.queue_depth}

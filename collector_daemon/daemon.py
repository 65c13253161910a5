"""The collector process for one venue of the registry (``TICKVAULT_VENUE``): universe ->
connection(s) per endpoint -> pipeline -> writer, with gap detection and in-loop recovery,
stats, metrics, a collector_status heartbeat and a clean shutdown.

Shutdown (SIGTERM/SIGINT, or the end of a replay) runs in this order so the tail is never lost:
stop reading the sockets, flush every buffered and queued batch, write the last heartbeat, and
only then close the database pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
import time
from dataclasses import dataclass

import asyncpg
from aiolimiter import AsyncLimiter

from collector_daemon import __version__
from collector_daemon.connection import (
    UNREACHABLE_REPORT_AFTER, Connection, Watchdog, backoff_delay, certificate_error, unless_set,
    unreachable_cause,
)
from collector_daemon.core.accounts import Account, AccountKeeper, PrivateSession, private_connection_id
from collector_daemon.core.recovery import GapRecovery
from collector_daemon.core.rest_budget import budgeted_client
from collector_daemon.core.universe import UNIVERSE_CHANNEL, apply_universe, read_universe
from collector_daemon.gaps import GapKeeper
from collector_daemon.sharding import assign, shard_of
from collector_daemon.metrics import MetricsServer, Stats, refresh_database_facts
from collector_daemon.pipeline import Pipeline
from collector_daemon.rows import TableSpec
from collector_daemon.settings import Settings
from collector_daemon.storage import queries
from collector_daemon.storage.spool import Spool
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues import RestClient, get_venue

log = logging.getLogger(__name__)

#: Seconds a stop by signal gives the last spool drain when the database is down (the batches
#: not written by then stay in the spool for the next start) and the last gap recovery (gaps not
#: recovered by then stay open for Dagster's backfill); the end of a replay drains longer.
SIGNAL_DRAIN_S = 1.0
SIGNAL_RECOVERY_S = 1.0
PIPELINE_DRAIN_S = 10.0
#: Bound of each closing database step (last heartbeat, closing the pool), s.
CLOSE_STEP_S = 1.0
#: A reconciliation after a reconnect starts this long before the previous one started (µs).
RECONCILE_OVERLAP_US = 60_000_000


#: Allocations of tracked objects between two generation-0 collections once started (CPython's
#: default is 700); see :func:`tune_gc`.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Set CPython's cyclic garbage collector up for streaming, once start-up is done: collect,
    then ``gc.freeze()`` what start-up built (modules, settings, the universe: never scanned
    again), and raise the generation-0 threshold from 700 to :data:`GC_GEN0_THRESHOLD` tracked
    allocations (generations 1 and 2 keep their ratios, 10 and 10).

    Why: every stored row is a tuple the collector tracks, and rows wait in the pipeline's
    buffers and writer queue (up to ``queue_batches`` x ``batch_rows``) long enough to be
    promoted. At ~150,000 rows/s the default ran ~200 generation-0 collections a second and
    re-scanned those buffered rows in every older-generation pass (docs/benchmarks.md,
    "Collector"). The hot path makes little cyclic garbage (the Deribit notification structs are
    not tracked at all), so collecting it 70 times less often costs a few MB at most.
    Process-wide and idempotent."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _where(dsn: str) -> str:
    """host:port/dbname of a DSN, without user or password (for the log)."""
    from urllib.parse import urlsplit
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


class UniverseNotWritten(LookupError):
    """Worker 2..N of a daemon found no universe set in the table (worker 1 writes it)."""


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
    """One collector process: one venue, its universe groups (currencies, categories), one shard
    of the universe, spread over as many WebSocket connections per endpoint as the subscription
    set needs.

    Args:
        settings: configuration (database URL, venue and its settings, sharding, batching,
            backoff, metrics), from :func:`collector_daemon.settings.load_settings`.
        ws_url / rest_url: override the venue endpoints (the emulator in replay mode): one URL
            for every WebSocket endpoint, or a dict per endpoint key.
        stop_on_replay_end: finish when the server ends the replay (``collect --replay``); a
            replay also leaves exchange->receive latency out of stats and metrics (exchange_ts
            is the capture's clock, years behind the receive time).
        fresh_universe: take the first universe from REST and write it to the table even when
            the table holds one (``collect --replay``: the emulator is another world).
        worker: ``(i, N)``: this process is worker i of the N of one daemon
            (:mod:`collector_daemon.workers`; its shard is already in ``settings``). Only worker 1
            does the venue-wide duties: the chain-wide channels (channels of no instrument) and
            writing the universe table from REST; the others take the universe from the table
            (waiting for worker 1 to write it). The subscribe budget is divided among the N.
    """

    def __init__(self, settings: Settings, *, ws_url: str | dict[str, str] | None = None,
                 rest_url: str | None = None, stop_on_replay_end: bool = False,
                 fresh_universe: bool = False, worker: tuple[int, int] = (1, 1)) -> None:
        self.settings = settings
        self.venue = get_venue(settings.venue)
        self.venue_settings = vs = settings.venue_settings
        self.protocol = self.venue.protocol(vs)
        endpoints = self.venue.ws_endpoints(vs)
        if isinstance(ws_url, str):
            endpoints = {key: ws_url for key in endpoints}
        elif ws_url:
            endpoints = {**endpoints, **ws_url}
        #: private (per account) connections: the "private" key of ``ws_url``, or the venue's
        self.private_url = endpoints.pop("private", None) or self.venue.private_ws_url(vs)
        self.ws_urls = endpoints
        self.rest_url = rest_url or vs.rest_url
        self.streams = self.venue.streams(vs)
        self.stop_on_replay_end = stop_on_replay_end
        self.fresh_universe = fresh_universe
        self.venue_wide = worker[0] == 1
        k, n = settings.shard_index
        self.tag = "-".join([self.venue.name, *(g.lower() for g in vs.universe_groups() if g != "*")]
                            + ([f"shard{k}of{n}"] if n > 1 else []))
        self.collector_id = settings.collector_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stats = Stats(venue=self.venue.name)
        # pool: the pipeline's writes, the gap keeper and the in-loop recovery, one each
        self.writer = BatchWriter(settings.database_url.get_secret_value(), venue=self.venue.name,
                                  pool_size=3, on_retry=self._on_db_retry,
                                  write_timeout_s=settings.write_timeout_s)
        self.spool = Spool(settings.spool_dir / self.tag, max_bytes=settings.spool_max_bytes)
        self.pipeline = Pipeline(self.writer.write, batch_rows=settings.batch_rows,
                                 flush_interval_s=settings.flush_interval_s,
                                 queue_batches=settings.queue_batches, on_written=self._on_written,
                                 spool=self.spool)
        self.stats.queue_depth = lambda: self.pipeline.queue_depth
        self.stats.spool = self.pipeline.spool_stats
        self.stats.spool_dir = self.spool.directory
        self.stats.gaps_pending = lambda: self.gaps.pending if self.gaps is not None else 0
        self.stats.rows_written = self.writer.rows_written        # the writer's own counters,
        self.stats.rows_duplicate = self.writer.rows_duplicate    # updated in place per batch
        limits = self.venue.limits   # the subscribe budget is shared by all sockets
        self._limiter = AsyncLimiter(max(1, limits.subscribe_burst // worker[1]), limits.subscribe_period_s)
        self._connect_limiter = (AsyncLimiter(*limits.connects_per_period)
                                 if limits.connects_per_period else None)
        self._watchdog = Watchdog(settings.silence_reconnect_s, {
            s.table.name: (s.stale_warn_s, s.stale_reconnect_s) for s in self.streams})
        self.gaps: GapKeeper | None = None    # needs the pool: created in run()
        self.recovery: GapRecovery | None = None
        self._give_up = asyncio.Event()       # set when shutdown_recovery_s has passed
        self.connections: list[Connection] = []
        self._conn_tasks: list[asyncio.Task] = []
        self.accounts: AccountKeeper | None = None   # with private_url: created in run()
        self._running = False
        self.stats.subscribed_channels = lambda: sum(len(c.subscribed) for c in self.connections)
        self._stream_tables = {s.table.name for s in self.streams}
        #: the subscription set per universe group, highest open interest first (before sharding)
        self.universe: dict[str, list[str]] = {}
        self._unserved_warned: set[str] = set()  # groups warned about a set not serving us
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
            the venue's ``rest_errors``: the first universe fetch failed.
            asyncpg errors that are not transient (e.g. the schema is missing).
        """
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        log.info("connecting to the database at %s", _where(self.settings.database_url.get_secret_value()))
        if not (await unless_set(self._stop, self.writer.open()))[0]:
            log.info("stopped while waiting for the database: nothing was received, nothing to write")
            await self.writer.close()
            return self._summary(started)
        self.pipeline.start()
        self._start_metrics()
        self.gaps = GapKeeper(self.venue.name, self.writer.pool, self._recover, streams=self.streams,
                              spool=self.spool, write_timeout_s=self.settings.write_timeout_s,
                              seed_days=self.venue.sequence_seed_days)
        if not (await unless_set(self._stop, self.gaps.seed()))[0]:
            return await self._stopped_at_start(started)
        log.info("sequence tracking (%s) seeded for %d instruments",
                 ", ".join(self.gaps.sequenced_streams) or "no sequenced stream",
                 sum(len(v) for v in self.gaps.last.values()))
        concurrency = self.settings.rest_max_concurrency
        history = (self.venue.rest_client(self.venue_settings, base_url=self.venue_settings.history_url,
                                          max_concurrency=concurrency)
                   if self.venue_settings.history_url else None)
        async with budgeted_client(self.venue, self.venue_settings, self.settings.database_url.get_secret_value(),
                                   base_url=self.rest_url, max_concurrency=concurrency,
                                   budget_settings=self.settings) as rest:
            self.recovery = GapRecovery(self.venue, self.venue_settings, self.writer.sibling(), rest,
                                        history, max_concurrency=concurrency)
            if not (await unless_set(self._stop, self._first_universe(rest)))[0]:
                if history is not None:
                    await history.aclose()
                return await self._stopped_at_start(started)
            self._running = True
            tune_gc()   # start-up is done: what it built is frozen, collections are rarer
            for conn in self.connections:
                self._conn_tasks.append(asyncio.create_task(conn.run(), name=conn.connection_id))
            side_tasks = [asyncio.create_task(self._universe_loop(rest), name="universe"),
                          asyncio.create_task(self._supervise(), name="supervise"),
                          gaps_task := self.gaps.start(),
                          asyncio.create_task(self._stats_loop(), name="stats"),
                          asyncio.create_task(self._status_loop(), name="status")]
            if self.private_url:
                self.accounts = AccountKeeper(self.venue.name, self.settings.database_url.get_secret_value(),
                                              lambda a: self._private_session(a, rest),
                                              refresh_s=self.settings.accounts_refresh_s)
                side_tasks.append(asyncio.create_task(self.accounts.run(), name="accounts"))
                self.stats.accounts = self.accounts.status
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
            if self.accounts is not None:
                await self.accounts.stop()
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
            # the gap keeper is not cancelled: a recovery in flight is finished below
            others = [t for t in (*side_tasks, stop_task, ended_task) if t is not gaps_task]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            if writer_task.done() and not writer_task.cancelled() and writer_task.exception():
                if history is not None:
                    await history.aclose()
                raise writer_task.exception()
            # stopped by a signal: the whole stop must fit in STOP_BUDGET_S (container runtimes
            # and systemd kill after ~10 s); what the database cannot take in time is spooled,
            # gaps not recovered in time stay open for Dagster
            signalled = self._stop.is_set()
            await self.pipeline.close(
                drain_timeout_s=SIGNAL_DRAIN_S if signalled else PIPELINE_DRAIN_S)
            for conn in self.connections:
                conn.close_pending_window()
            # record the gaps found at the very end and recover what REST can in
            # shutdown_recovery_s; then the recovery gives up (within ~0.2 s) and leaves the rest
            # open for Dagster
            give_up = asyncio.get_running_loop().call_later(
                min(self.settings.shutdown_recovery_s, SIGNAL_RECOVERY_S) if signalled
                else self.settings.shutdown_recovery_s, self._give_up.set)
            try:
                await self.gaps.close()
            except Exception as exc:  # noqa: BLE001 - open gaps are left to the Dagster backfill
                log.error("gaps at shutdown not fully recorded/recovered: %r", exc)
            finally:
                give_up.cancel()
                if history is not None:
                    await history.aclose()
        await self._close_database()
        self._log_stats()
        if failed is not None:
            raise RuntimeError(f"collector stopped by a failed task: {failed!r}") from failed
        return self._summary(started)

    def _summary(self, started: float) -> Summary:
        return Summary(time.monotonic() - started, self.stats.messages,
                       dict(self.stats.rows_received), dict(self.writer.rows_written),
                       dict(self.writer.rows_duplicate), self.stats.rejected, self.stats.reconnects)

    async def _close_database(self) -> None:
        """The last heartbeat (``stopped_at``), then the pool; each bounded in time (the data is
        flushed or spooled by now: a database gone away must not hold the stop up)."""
        try:
            await asyncio.wait_for(self._heartbeat(stopped=True), CLOSE_STEP_S)
        except Exception as exc:  # noqa: BLE001 - the status row only; the data is flushed
            log.warning("collector_status: could not record the shutdown: %r", exc)
        try:
            await asyncio.wait_for(self.writer.close(), CLOSE_STEP_S)
        except (asyncio.TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("database pool did not close cleanly (%r): terminating it", exc)
            self.writer.terminate()
        if self._metrics is not None:
            self._metrics.stop()

    async def _stopped_at_start(self, started: float) -> Summary:
        """Stopped before any connection ran: flush the (empty or event-only) pipeline, close."""
        log.info("stopped during start-up")
        await self.pipeline.close(drain_timeout_s=SIGNAL_DRAIN_S)
        await self._close_database()
        return self._summary(started)

    async def _first_universe(self, rest: RestClient) -> None:
        """The first universe load, retried with the reconnect back-off while the venue's REST
        API cannot be reached (offline machine, exchange down); after
        ``UNREACHABLE_REPORT_AFTER`` failures the log says so plainly, once, and points to the
        replay. Cancelled by a stop (:func:`~collector_daemon.connection.unless_set`)."""
        attempt, waiting = 0, False
        while True:
            try:
                await self._refresh_universe(rest)
                return
            except UniverseNotWritten as exc:   # worker 2..N: worker 1 writes it shortly
                if not waiting:        # said once (worker 1 reports its own REST trouble)
                    log.info("%s; waiting for worker 1 to write it", exc)
                waiting = True
                await asyncio.sleep(0.5)
                continue
            except self.venue.rest_errors as exc:
                if certificate_error(exc) is not None:   # a wrong CA is not an outage: fail at start
                    raise
                attempt += 1
                delay = backoff_delay(attempt - 1, self.settings.backoff_min_s, self.settings.backoff_max_s)
                if attempt == UNREACHABLE_REPORT_AFTER:
                    cause = unreachable_cause(exc) or f"{type(exc).__name__}: {exc}"
                    log.error("cannot load the instrument universe from %s after %d attempts: %s. "
                              "Is this machine offline? Still retrying (back-off capped at %g s). "
                              "Without internet, replay a capture instead: scripts/run --replay "
                              "CAPTURE", self.rest_url, attempt, cause, self.settings.backoff_max_s)
                log.warning("universe: %s at %s (%s); waiting %.1f s before trying again",
                            type(exc).__name__, self.rest_url, exc, delay)
                await asyncio.sleep(delay)

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
    def _connection(self, endpoint: str, index: int) -> Connection:
        name = f"{self.tag}-{index}" if len(self.ws_urls) == 1 else f"{self.tag}-{endpoint}-{index}"
        observers = {s.table.name: obs for s in self.streams
                     if self.gaps is not None and (obs := self.gaps.observer(s.table.name)) is not None}
        conn = Connection(
            self.protocol, self.ws_urls[endpoint], name, self.pipeline, self.stats,
            self._limiter, backoff_min_s=self.settings.backoff_min_s,
            backoff_max_s=self.settings.backoff_max_s, stop_on_replay_end=self.stop_on_replay_end,
            refused_retry_s=self.settings.refused_retry_s, watchdog=self._watchdog,
            recv_buffer_bytes=self.settings.ws_recv_buffer_bytes, observers=observers,
            on_lost_window=self._lost_window,
            stream_tables={s.name: s.table.name for s in self.streams}, endpoint=endpoint,
            connect_limiter=self._connect_limiter)
        return conn

    async def _private_session(self, account: Account, rest: RestClient) -> PrivateSession:
        """Start ``account``'s private connection, reconciled over REST (pages into the pipeline)
        at start (as far back as the venue's settings say) and after every reconnect (since the
        previous reconciliation started, less :data:`RECONCILE_OVERLAP_US`)."""
        conn = Connection(
            self.venue.private_protocol(self.venue_settings, account), self.private_url,
            private_connection_id(self.venue.name, account.label), self.pipeline, self.stats, self._limiter,
            backoff_min_s=self.settings.backoff_min_s, backoff_max_s=self.settings.backoff_max_s,
            refused_retry_s=self.settings.refused_retry_s, endpoint="private",
            recv_buffer_bytes=self.settings.ws_recv_buffer_bytes,
            watchdog=Watchdog(self.settings.silence_reconnect_s, {}))   # ping/pong decides liveness

        since: list[int | None] = [None]   # None: the venue's first look-back

        async def reconcile(account: Account) -> None:
            started_us = time.time_ns() // 1000
            async for table, rows in self.venue.reconcile_account(rest, self.venue_settings, account, since[0]):
                if rows and self.pipeline.add(table, rows):
                    await self.pipeline.seal(table)
            since[0] = started_us - RECONCILE_OVERLAP_US   # the next one covers what follows
        return await PrivateSession(account, conn, reconcile, pool=self.writer.pool,
                                    private_streams=self.venue.private_streams).start()

    def _live(self) -> tuple[int, ...]:
        """Indices of connections that are up or not down for longer than ``failover_s``."""
        now = time.monotonic()
        live = tuple(i for i, c in enumerate(self.connections)
                     if c.down_since is None or now - c.down_since < self.settings.failover_s)
        return live or tuple(range(len(self.connections)))

    async def _rebalance(self) -> None:
        """Spread ``self.channels`` over the live connections of each endpoint, opening
        connections as needed. Connections that gain channels are updated first, so a moved
        channel is subscribed on its new connection before it is dropped from the old one."""
        by_endpoint: dict[str, list[str]] = {key: [] for key in self.ws_urls}
        for channel in self.channels:
            by_endpoint.setdefault(self.protocol.endpoint_of(channel), []).append(channel)
        live = set(self._live())
        plan: dict[int, list[str]] = {}
        for endpoint, channels in by_endpoint.items():
            mine = [i for i, c in enumerate(self.connections) if c.endpoint == endpoint]
            if not channels and not mine:
                continue
            per_connection = min(self.settings.channels_per_connection,
                                 self.protocol.max_channels_per_connection(channels) or math.inf)
            needed = min(self.settings.max_connections,
                         max(1, math.ceil(len(channels) / per_connection)))
            while len(mine) < needed:
                conn = self._connection(endpoint, len(mine))
                self.connections.append(conn)
                mine.append(len(self.connections) - 1)
                live.add(mine[-1])
                if self._running:
                    self._conn_tasks.append(asyncio.create_task(conn.run(), name=conn.connection_id))
            targets = [i for i in mine if i in live] or mine
            plan.update(assign(channels, targets))
            for i in mine:
                plan.setdefault(i, [])
        self._alive = self._live()
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
    async def _refresh_universe(self, rest: RestClient) -> None:
        """Load the subscription set of every universe group (currency, category), keep this
        shard's part, and spread it over the connections.

        The ``universe_versions`` table is authoritative (the Dagster ``instrument_universe``
        asset writes it hourly, announcing changes by NOTIFY). REST is the fallback:

        * no set for the venue and group yet, nobody refreshed the table for
          ``universe_stale_s`` (no Dagster running), or the first refresh with
          ``fresh_universe``: fetch, and write the table as the asset would (same function);
        * a set that does not serve this collector's kinds or top N
          (:meth:`~collector_daemon.core.universe.UniverseVersion.serves`): fetch and subscribe
          without writing, so the collector and Dagster do not overwrite each other's set.
        """
        venue, vs = self.venue, self.venue_settings
        kinds, top_n = venue.universe_kinds(vs), vs.top_n
        universe: dict[str, list[str]] = {}
        for group in vs.universe_groups():
            async with self.writer.pool.acquire() as conn:
                current = await read_universe(conn, venue.name, group)
                # when the table's set was last refreshed: its instruments' newest update (a
                # group is a currency or a category, so it is found by the set's names)
                last_refresh_us = None if current is None else await conn.fetchval(
                    "SELECT max(updated_at) FROM instruments WHERE venue = $1 "
                    "AND instrument_name = ANY($2::text[])", venue.name, current.subscribed)
            age_s = (time.time_ns() // 1000 - last_refresh_us) / 1e6 if last_refresh_us else None
            served = current.serves(kinds, top_n) if current is not None else None
            if not self.venue_wide and current is None:
                raise UniverseNotWritten(f"universe {group}: no set in universe_versions yet")
            if self.venue_wide and (current is None or age_s is None or age_s > self.settings.universe_stale_s
                                    or (self.fresh_universe and not self.universe)):
                if current is not None and age_s is not None and age_s > self.settings.universe_stale_s:
                    log.warning("universe %s: table last refreshed %.0f s ago (is Dagster's "
                                "instrument_universe schedule running?); refreshing it from REST",
                                group, age_s)
                fetched = await venue.fetch_universe(rest, vs, group)
                async with self.writer.pool.acquire() as conn:
                    refresh = await apply_universe(conn, fetched, venue=venue.name, currency=group,
                                                   top_n=top_n, kinds=kinds)
                universe[group], source = refresh.selected, f"REST, version {refresh.version}"
            elif served is None:
                if group not in self._unserved_warned:
                    self._unserved_warned.add(group)
                    log.warning("universe %s: universe_versions %d (kinds %s, top_n %s) does not serve "
                                "kinds %s, top_n %s; subscribing from REST without writing it (give "
                                "Dagster the same kinds and top N settings)", group,
                                current.version, ",".join(current.kinds or ["option"]),
                                current.top_n or "all", ",".join(kinds), top_n or "all")
                fetched = await venue.fetch_universe(rest, vs, group)
                universe[group], source = list(fetched.selected), "REST, not written"
            else:
                universe[group], source = served, f"universe_versions {current.version}"
            if universe[group] != self.universe.get(group):
                log.info("universe %s (%s): %d instruments", group, source, len(universe[group]))
        self.universe = universe
        k, n = self.settings.shard_index
        selected = [name for names in universe.values() for name in names
                    if n == 1 or shard_of(name, n) == k]
        if selected != self.selected or not self.connections:
            self.selected = selected
            self.channels = [c for c in self.protocol.channels_for(selected)
                             if self.venue_wide or self.venue.channel_instrument(c) is not None]
            log.info("subscribing %d instruments (shard %d/%d), %d channels", len(selected), k, n,
                     len(self.channels))
            await self._rebalance()

    async def _universe_loop(self, rest: RestClient) -> None:
        """Refresh on NOTIFY tickvault_universe (immediately) or every ``universe_refresh_s``."""
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
                    try:   # also retries channels the exchange refused before
                        await conn.reconcile()
                    except (TimeoutError, ConnectionError) as exc:
                        # the connection's own loop reconnects (and resubscribes) if it is gone;
                        # an unanswered subscribe is retried at the next refresh
                        log.warning("%s: subscription update failed (%r); retried at the next "
                                    "universe refresh", conn.connection_id, exc)
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
            await queries.heartbeat(conn, self.collector_id, self.venue.name, socket.gethostname(),
                                    os.getpid(), __version__, int(self.stats.started_at * 1e6),
                                    self.stats.snapshot(), stopped=stopped)
            await refresh_database_facts(self.stats, conn)

    def _log_stats(self) -> None:
        s = self.stats.snapshot()
        # in a replay exchange_ts is the capture's (years old): no exchange->receive latency
        exchange = ("" if self.stop_on_replay_end else
                    f" exchange->receive p50/p99={s['exchange_to_receive_ms_p50']}/"
                    f"{s['exchange_to_receive_ms_p99']} ms")
        log.info("stats: messages=%d rows=%s duplicates=%s rejected=%d queue=%d reconnects=%d "
                 "channels=%d%s receive->commit p50/p99=%s/%s ms",
                 s["messages"], s["rows_written"], s["rows_duplicate"], s["rejected"],
                 s["queue_depth"], s["reconnects"], s["subscribed_channels"], exchange,
                 s["receive_to_commit_ms_p50"], s["receive_to_commit_ms_p99"])

    # ------------------------------------------------------------------ callbacks
    def _on_written(self, table: TableSpec, rows: list[tuple], inserted: int, sealed_at: float) -> None:
        if table.name in self._stream_tables:
            now_us = time.time_ns() // 1000
            ex, rx = table.exchange_ts_index, table.columns.index("receive_ts")
            sample = rows[::max(1, len(rows) // 200)]
            if rows:   # the newest committed exchange time (a crashed worker's gap starts there)
                self.stats.committed_exchange_us = max(self.stats.committed_exchange_us,
                                                       rows[-1][ex], *(r[ex] for r in sample))
            if not self.stop_on_replay_end:   # a replay's exchange_ts is the capture's clock
                self.stats.exchange_latency.add_many([(r[rx] - r[ex]) / 1000 for r in sample])
            self.stats.commit_latency.add_many([(now_us - r[rx]) / 1000 for r in sample])

    def _lost_window(self, connection_id: str, start_us: int, end_us: int | None,
                     tables: tuple[str, ...]) -> None:
        if self.gaps is not None:
            self.gaps.lost_window(connection_id, start_us, end_us, tables)

    async def _recover(self, gap_ids: list[int]) -> list[int]:
        """Resolve open gaps over REST on this loop, pool and REST client (at most
        ``rest_max_concurrency`` gaps at once); returns the ids left open because REST failed
        (the gap keeper tries them again)."""
        # "now" for the venue's REST horizon is the venue's clock as observed (the newest
        # exchange timestamp received): the wall clock live, the capture's clock in a replay
        venue_now_us = max((c.exchange_clock_us for c in self.connections), default=0) or time.time_ns() // 1000
        report = await self.recovery.recover_ids(gap_ids, now_us=venue_now_us, give_up=self._give_up)
        log.info("recovery: %d gap(s): %d backfilled, %d unrecoverable, %d open; %d rows fetched, "
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

"""Gap detection in the daemon, and recovery right after it.

What is detected (one :class:`~collector_daemon.core.gaps.Gap` each, stored in ``data_gaps``
with exact bounds, ``detected_by`` naming the rule), following each stream's policy
(:class:`~collector_daemon.venues.StreamSpec`):

* sequence jumps (``detected_by`` = the sequence column, e.g. ``trade_seq``) on streams with
  ``Recovery.SEQUENCE``: the number is per instrument and +1 per row (Deribit's trade_seq,
  measured on the real captures, docs/reliability.md). The last stored number per instrument is
  kept (seeded from the database at start); a jump opens a gap for that instrument with the
  missing range ``seq_from..seq_to`` (inclusive) and the exchange times of the rows around it.
  A number at or below the last one is a duplicate (reconnect overlap, REST) and is ignored.
* ``disconnect``: every window between the last frame before a disconnect and the confirmed
  resubscription is a gap for every stream of that connection, instrument ``*``:
  ``unrecoverable`` with the stream's reason when the venue serves no history of it (Deribit
  tickers), else ``open`` and recovered below.

Recovery: open gaps are handed, oldest first, to ``recover`` (the collector's
:class:`~collector_daemon.core.recovery.GapRecovery` on its own event loop, pool and REST
client), which marks each gap ``backfilled`` or ``unrecoverable`` with the reason. Windows beyond
the venue's REST horizon stay ``open`` for the Dagster backfill asset, which owns history.

Database outages: a gap leaves the pending list only once its row is stored. When the database
is down (or hangs: each attempt is bounded by ``write_timeout_s``), the gaps stay pending, in
order, and the background task retries with capped exponential backoff; it never ends on a
database error. The pending list is bounded (``max_pending``; past it the oldest gap is dropped
with an error log and counted in ``gaps_lost``). At :meth:`GapKeeper.close` with the database
still down, the pending gaps are appended to the spool (if given), which lands them in
``data_gaps`` (status as detected, no REST recovery: open ones are left to the Dagster
backfill) when the next run drains it. A gap the database refuses as data is logged and dropped
so it cannot block the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from collector_daemon.core.gaps import Gap, GapStatus, insert_gap
from collector_daemon.rows import DATA_GAPS
from collector_daemon.storage.spool import Spool
from collector_daemon.storage.writer import WRITE_TIMEOUT_S, is_bad_data, bounded_connection
from collector_daemon.venues import Recovery, StreamSpec, get_venue

log = logging.getLogger(__name__)

#: Attempts to store the last gaps at close: a failed attempt terminates its connection, so a
#: pool whose connections a server restart broke (the writer's holds 2) heals within this many.
_CLOSE_ATTEMPTS = 3

#: ``recover(gap_ids) -> retry_ids``: resolves the given open gaps (runs the shared REST
#: backfill); returns the ids it left open because REST failed (to be tried again later).
RecoverFn = Callable[[list[int]], Awaitable[list[int] | None]]

#: Delays before a gap whose recovery failed (REST errors after the client's own retries) is
#: tried again (s); after the last one it is left open for the Dagster backfill.
RECOVERY_RETRY_DELAYS_S = (5.0, 20.0, 80.0, 320.0)


def window_gap(venue: str, spec: StreamSpec, start_us: int, end_us: int, detected_by: str,
               why: str) -> Gap:
    """The gap of a window of exchange time (µs since the epoch, UTC) in which nothing of
    ``spec``'s stream was received, every instrument (``*``): ``open`` when the venue serves
    its history (recovered over REST or by Dagster), else ``unrecoverable`` with the stream's
    reason appended to ``why``. ``detected_by``: ``disconnect`` (a connection's lost window),
    ``worker_exit`` (a worker process died, :mod:`collector_daemon.workers`)."""
    if spec.recoverable:
        return Gap(venue, spec.name, "*", start_us, end_us, None, None, detected_by,
                   GapStatus.OPEN, why)
    return Gap(venue, spec.name, "*", start_us, end_us, None, None, detected_by,
               GapStatus.UNRECOVERABLE,
               f"{why}; {spec.unrecoverable_reason or 'the venue serves no history of it'}")


class GapKeeper:
    """Watches the sequenced streams for jumps, records gaps and triggers their recovery.

    Args:
        venue: venue name stored in ``data_gaps``.
        streams: the venue's streams (gap policy per stream); default: those of the registered
            venue called ``venue`` with its settings from the environment.
        pool: an asyncpg pool whose connections use ``writer.init_connection`` (µs timestamps).
        recover: coroutine that resolves open gap ids over REST; None = record only.
        seed_days: how far back the last trade_seq per instrument is looked up at start; None =
            the whole table (a venue whose REST serves all history: the first live row then opens
            the gap from the last stored one, i.e. the sync from the last stored trade to now).
        spool: where the gaps still pending at :meth:`close` go when the database is down;
            None = :meth:`close` raises the database error instead.
        max_pending: most gaps held while the database is unavailable.
        retry_backoff_s: (first, max) delay between attempts to store pending gaps (s).
        write_timeout_s: longest one attempt may take (s); a hung database counts as down.
        recovery_retry_delays_s: when ``recover`` reports gaps it could not resolve (REST
            failed), each is tried again after these delays in turn (s); a try still waiting at
            :meth:`close` is made then. After that the gap stays open for the Dagster backfill.
    """

    def __init__(self, venue: str, pool: asyncpg.Pool, recover: RecoverFn | None = None, *,
                 streams: Sequence[StreamSpec] | None = None, seed_days: int | None = 3, spool: Spool | None = None, max_pending: int = 10_000,
                 retry_backoff_s: tuple[float, float] = (0.5, 10.0),
                 write_timeout_s: float = WRITE_TIMEOUT_S,
                 recovery_retry_delays_s: tuple[float, ...] = RECOVERY_RETRY_DELAYS_S) -> None:
        self.venue = venue
        if streams is None:
            streams = get_venue(venue).stream_specs()
        self.streams = {s.name: s for s in streams}
        # table name -> (stream, sequence column index, instrument index, exchange_ts index)
        self._sequenced = {
            s.table.name: (s, s.table.columns.index(s.sequence_column),
                           s.table.columns.index("instrument_name"), s.table.exchange_ts_index)
            for s in streams if s.recovery is Recovery.SEQUENCE}
        self.pool = pool
        self.recover = recover
        self.seed_days = seed_days
        self.spool = spool
        self.max_pending = max_pending
        self.retry_backoff_s = retry_backoff_s
        self.write_timeout_s = write_timeout_s
        self.recovery_retry_delays_s = recovery_retry_delays_s
        self._recovery_attempts: dict[int, int] = {}              # gap id -> failed recoveries
        self._retry_timers: dict[int, asyncio.TimerHandle] = {}   # gap id -> its next try
        self.recovery_retries = 0
        #: stream -> instrument -> (last sequence number, its exchange µs)
        self.last: dict[str, dict[str, tuple[int, int]]] = {s: {} for s in self.sequenced_streams}
        self._pending: deque[Gap] = deque()
        self._unrecovered: list[int] = []   # stored open gaps whose recovery has not run yet
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.gaps_recorded = 0
        self.seq_gaps = 0
        self.gaps_lost = 0
        self.store_failures = 0

    @property
    def sequenced_streams(self) -> list[str]:
        """The streams checked for sequence jumps."""
        return [s.name for s, *_ in self._sequenced.values()]

    @property
    def pending(self) -> int:
        """Gaps found but not stored yet (the database is unavailable)."""
        return len(self._pending)

    async def seed(self) -> int:
        """Load the newest stored sequence number per instrument of each sequenced stream;
        returns how many instruments."""
        async with self.pool.acquire() as conn:
            for table, (spec, *_) in self._sequenced.items():
                col = spec.sequence_column
                recent = ("AND exchange_ts > now() - make_interval(days => $2) "
                          if self.seed_days is not None else "AND $2::int IS NULL ")
                rows = await conn.fetch(
                    f"SELECT DISTINCT ON (instrument_name) instrument_name, {col}, exchange_ts "
                    f"FROM {table} WHERE venue = $1 AND {col} IS NOT NULL {recent}"
                    f"ORDER BY instrument_name, {col} DESC", self.venue, self.seed_days)
                self.last[spec.name] = {r[0]: (r[1], r[2]) for r in rows}
        return sum(len(v) for v in self.last.values())

    def observer(self, table: str) -> Callable[[list[tuple]], None] | None:
        """The per-frame check of ``table``'s rows (None when its stream has no sequence)."""
        entry = self._sequenced.get(table)
        if entry is None:
            return None
        spec, seq_i, name_i, ts_i = entry
        last = self.last[spec.name]
        col = spec.sequence_column

        def observe(rows: list[tuple]) -> None:
            for row in rows:
                seq = row[seq_i]
                if seq is None:
                    continue
                name = row[name_i]
                prev = last.get(name)
                if prev is None or seq > prev[0]:
                    last[name] = (seq, row[ts_i])
                    if prev is not None and seq > prev[0] + 1:
                        self.seq_gaps += 1
                        self._add(Gap(self.venue, spec.name, name, prev[1], row[ts_i], prev[0] + 1,
                                      seq - 1, col, GapStatus.OPEN,
                                      f"{col} jumped from {prev[0]} to {seq}"))
        return observe

    def lost_window(self, connection_id: str, start_us: int, end_us: int | None,
                    streams: tuple[str, ...] | None = None) -> None:
        """Record the window a reconnect lost, in exchange time (µs), for ``streams`` (default:
        every stream of the venue). ``end_us`` None (the connection stopped before data resumed)
        extends the window to now."""
        if end_us is None:
            end_us = max(start_us, time.time_ns() // 1000)
        for name in (self.streams if streams is None else streams):
            self._add(window_gap(self.venue, self.streams[name], start_us, end_us, "disconnect",
                                 f"{connection_id} disconnected"))

    def _add(self, gap: Gap) -> None:
        if len(self._pending) >= self.max_pending:
            lost = self._pending.popleft()
            self.gaps_lost += 1
            log.error("gaps: %d pending while the database is unavailable; dropped the oldest "
                      "unstored: %s", len(self._pending) + 1, lost)
        self._pending.append(gap)
        self._wake.set()

    def start(self) -> asyncio.Task:
        """Store pending gaps and recover the open ones in a background task, until :meth:`close`."""
        self._task = asyncio.create_task(self._run(), name="gaps")
        return self._task

    async def _run(self) -> None:
        first, cap = self.retry_backoff_s
        delay = first
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                delay = first
            except Exception as exc:  # noqa: BLE001 - never end the task: the gaps stay pending
                self.store_failures += 1
                log.warning("gaps: %d not stored yet (%s: %s); retrying in %.1f s",
                            len(self._pending), type(exc).__name__, exc, delay)
                try:   # a new gap or close() cuts the wait short
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                self._wake.set()
                delay = min(cap, delay * 2)

    async def close(self) -> None:
        """At shutdown: let the recovery in flight finish (it is never abandoned half-way: the
        caller bounds it through the recover function's own give-up signal), then store and
        recover the gaps still pending. If the database cannot take them, they go to the spool
        (see the module docstring).

        Raises:
            Exception: the database error, when gaps could not be stored and there is no spool.
        """
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        for gap_id, timer in self._retry_timers.items():   # their last try: now
            timer.cancel()
            self._unrecovered.append(gap_id)
        self._retry_timers.clear()
        for _ in range(_CLOSE_ATTEMPTS):
            try:
                await self.flush()
                return
            except Exception as exc:  # noqa: BLE001 - each failure drops its connection: retry
                error = exc
        if self.spool is None:
            raise error
        rows = [g.row() for g in self._pending]
        self.spool.append(DATA_GAPS, rows, over_cap=True)
        self.spool.close()
        self._pending.clear()
        log.error("gaps: database unavailable at shutdown (%s); %d gaps spooled to %s for the "
                  "next start", error, len(rows), self.spool.directory)

    async def flush(self, recover: bool = True) -> list[int]:
        """Store every pending gap now and (with ``recover``) recover the open ones; returns
        the ids of the gaps stored.

        Raises:
            Exception: a database error (transient or not) or ``TimeoutError`` (an attempt took
                over ``write_timeout_s``); the gaps not stored stay pending, in order.
        """
        stored: list[Gap] = []
        try:
            if self._pending:
                await self._store(stored)
        finally:
            self.gaps_recorded += len(stored)
            self._unrecovered += [g.gap_id for g in stored if g.status is GapStatus.OPEN]
            for g in stored:
                log.warning("gap: %s", g.describe())
        open_ids, self._unrecovered = self._unrecovered, []
        if open_ids and recover and self.recover is not None:
            try:
                failed = await self.recover(open_ids)
            except Exception as exc:  # noqa: BLE001 - the gap stays open; Dagster retries it
                log.error("recovery of gaps %s failed: %s", open_ids, exc)
            else:
                failed = set(failed or ())
                for gap_id in open_ids:
                    if gap_id in failed:
                        self._retry_recovery_later(gap_id)
                    else:
                        self._recovery_attempts.pop(gap_id, None)
        return [g.gap_id for g in stored]

    def _retry_recovery_later(self, gap_id: int) -> None:
        n = self._recovery_attempts.get(gap_id, 0)
        self._recovery_attempts[gap_id] = n + 1
        if self._closing or n >= len(self.recovery_retry_delays_s):
            del self._recovery_attempts[gap_id]
            log.warning("gaps: recovery of gap %d failed %d time(s); left open for the Dagster "
                        "backfill", gap_id, n + 1)
            return
        delay = self.recovery_retry_delays_s[n]
        log.warning("gaps: recovery of gap %d failed; trying again in %.0f s", gap_id, delay)
        self._retry_timers[gap_id] = asyncio.get_running_loop().call_later(
            delay, self._requeue, gap_id)

    def _requeue(self, gap_id: int) -> None:
        self._retry_timers.pop(gap_id, None)
        self.recovery_retries += 1
        self._unrecovered.append(gap_id)
        self._wake.set()

    async def _store(self, stored: list[Gap]) -> None:
        """Insert pending gaps oldest first, popping each once stored (appended to ``stored``)."""
        async with bounded_connection(self.pool, self.write_timeout_s) as conn:
            while self._pending:
                g = self._pending[0]
                try:
                    gap_id = await insert_gap(conn, g)
                except asyncpg.PostgresError as exc:
                    if not is_bad_data(exc):
                        raise
                    self._pending.popleft()
                    self.gaps_lost += 1
                    log.error("gaps: the database refused %s: %s; dropped", g, exc)
                    continue
                self._pending.popleft()
                stored.append(g.stored(gap_id))

"""Gap recovery over REST: planning and execution, shared by the collector (right after it finds a
gap) and by the Dagster ``trades_backfill`` asset (a day's open gaps).

For each open gap (:func:`open_gaps` of a day, or :func:`open_gaps_by_id`) the venue plans
(:meth:`collector_daemon.venues.Venue.plan_recovery`) and fetches
(:meth:`~collector_daemon.venues.Venue.recovery_pages`: paging, pacing and retries live in the
venue's REST client); the rows are written insert-if-absent by the caller's ``BatchWriter`` (rows
the stream already has are skipped by the natural key). A venue may also yield ``(table, rows)``
pages for another table the same window lost (Kraken's candles from REST OHLC after a
disconnect); they are written by that table's rules and counted in the gap's note. Then each gap is resolved:

* sequence range: ``backfilled`` when every number of the range is now stored, else
  ``unrecoverable`` with how many are still missing;
* time window (instrument ``*``, e.g. a disconnect or a day without live capture, or a gap
  without sequence numbers): ``backfilled`` once the window was paged to its end;
  ``unrecoverable`` when the venue could serve only part of it (its ``recovery_pages`` raised
  :class:`~collector_daemon.venues.RecoveryIncomplete` naming the part; what it fetched is kept);
* not recoverable (the venue serves no history of the stream; windows past the venue's REST
  horizon without a history host): ``unrecoverable`` with the reason, without any request;
* a REST failure that survived the client's retries leaves the gap ``open`` and is reported in
  :attr:`RecoveryReport.errors` (a later try, or the Dagster backfill, takes it again).

``reason`` keeps the finder's text and appends `` | backfill: ...``; ``resolved_at`` is set.

Everything runs on the caller's event loop, its writer's asyncpg pool (µs timestamps) and its
REST clients; :class:`GapRecovery` bounds the gaps fetched at once with a semaphore.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import asyncpg

from collector_daemon.core import days
from collector_daemon.core.days import day_window, to_us
from collector_daemon.core.gaps import Gap, GapStatus
from collector_daemon.core.rest_budget import budgeted_client
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues import (
    RecoveryIncomplete, RecoveryPlan, RestClient, Venue, VenueSettings,
)

log = logging.getLogger(__name__)

_GAP_COLUMNS = ("venue, stream, instrument_name, gap_start, gap_end, seq_from, seq_to, detected_by, "
                "status, reason, gap_id, audit_day")


def _gap(record: asyncpg.Record) -> Gap:
    return Gap(*record[:8], GapStatus(record[8]), *record[9:])


async def open_gaps(conn: asyncpg.Connection, venue: str, day: str | date) -> list[Gap]:
    """Open gaps of ``venue``'s public streams a backfill of ``day`` handles: the day's audit
    findings and the collector's own findings overlapping the day (an account's private gaps are
    the REST reconciliation's, ``PrivateSession``). ``conn`` uses µs timestamps
    (``storage.writer.init_connection``)."""
    start, end = day_window(day)
    rows = await conn.fetch(
        f"SELECT {_GAP_COLUMNS} FROM data_gaps WHERE venue = $1 AND status = 'open' AND account_id IS NULL "
        "AND (audit_day = $2 OR (audit_day IS NULL AND gap_start < $4 AND gap_end >= $3)) "
        "ORDER BY stream, instrument_name, gap_start, gap_id",
        venue, start.date(), to_us(start), to_us(end))
    return [_gap(r) for r in rows]


async def open_gaps_by_id(conn: asyncpg.Connection, gap_ids: list[int]) -> list[Gap]:
    """The gaps among ``gap_ids`` that are still open (µs-timestamp connection)."""
    rows = await conn.fetch(
        f"SELECT {_GAP_COLUMNS} FROM data_gaps WHERE gap_id = ANY($1::bigint[]) AND status = 'open' "
        "ORDER BY gap_start, gap_id", gap_ids)
    return [_gap(r) for r in rows]


@dataclass(frozen=True)
class GapOutcome:
    """What the recovery did with one gap.

    Attributes:
        status: ``backfilled``, ``unrecoverable`` or ``open`` (REST failed; retry later).
        fetched: rows REST returned for it; ``inserted``: of those, new to the table.
        note: the text appended to the gap's reason (or the error for ``open``); rows the
            venue recovered into other tables for the same window are counted there by table
            (``; exchange_candles: 12 fetched, 12 written``), not in ``fetched``/``inserted``.
    """

    gap: Gap
    plan: RecoveryPlan
    status: GapStatus
    fetched: int
    inserted: int
    note: str


@dataclass
class RecoveryReport:
    """Totals of one recovery (``rest_calls``/``rest_retries`` summed over the clients)."""

    venue: str
    outcomes: list[GapOutcome] = field(default_factory=list)
    rest_calls: int = 0
    rest_retries: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[GapOutcome]:
        """Gaps left open because REST failed."""
        return [o for o in self.outcomes if o.status is GapStatus.OPEN]

    def count(self, status: str | GapStatus) -> int:
        """Number of gaps that ended with ``status``."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def trades_fetched(self) -> int:
        """Rows returned by REST."""
        return sum(o.fetched for o in self.outcomes)

    @property
    def trades_inserted(self) -> int:
        """Rows actually added (``source = 'rest'``)."""
        return sum(o.inserted for o in self.outcomes)


class GapRecovery:
    """Recovers gaps of one venue with the caller's writer and REST clients.

    Args:
        venue, settings: the venue and its settings (universe groups, kinds).
        writer: an open ``BatchWriter``: its pool reads and resolves gaps, its ``write`` stores
            the fetched rows insert-if-absent.
        rest: the venue's REST client on its main host; ``history``: on its archive host, or None.
        max_concurrency: gaps fetched at once.
    """

    def __init__(self, venue: Venue, settings: VenueSettings, writer: BatchWriter, rest: RestClient,
                 history: RestClient | None = None, *, max_concurrency: int = 4) -> None:
        self.venue = venue
        self.settings = settings
        self.writer = writer
        self.rest = rest
        self.history = history
        self._gate = asyncio.Semaphore(max_concurrency)
        #: gap id -> why the venue could serve only part of its window (RecoveryIncomplete)
        self._incomplete: dict[int, str] = {}
        #: gap id -> table -> (fetched, written) of the pages yielded as ``(table, rows)``
        self._other: dict[int, dict[str, tuple[int, int]]] = {}

    async def recover_ids(self, gap_ids: list[int], *, now_us: int,
                          give_up: asyncio.Event | None = None) -> RecoveryReport:
        """Recover the given gaps (those no longer open are skipped); see :meth:`recover`."""
        async with self.writer.pool.acquire() as conn:
            gaps = await open_gaps_by_id(conn, gap_ids)
        return await self.recover(gaps, now_us=now_us, give_up=give_up)

    async def recover(self, gaps: list[Gap], *, now_us: int, give_up: asyncio.Event | None = None,
                      progress: Callable[[int, int, GapOutcome], None] | None = None) -> RecoveryReport:
        """Fetch and resolve ``gaps`` (module docstring). ``now_us``: the venue's clock (µs) that
        decides what is within its REST horizon. ``give_up``, once set, stops the requests
        still running within ~0.2 s; their gaps stay open (in ``report.errors``), rows already
        fetched stay stored. ``progress(done, total, outcome)`` is called after each gap.

        Raises:
            asyncpg errors: the database failed (REST failures that survive the client's retries
                do not raise; they leave their gap open).
        """
        started = time.monotonic()
        calls0, retries0 = self._counters()
        report = RecoveryReport(self.venue.name)
        specs = {s.name: s for s in self.venue.streams(self.settings)}
        plans = []
        for gap in gaps:
            spec = specs.get(gap.stream)
            plan = (RecoveryPlan("none", reason=f"venue {self.venue.name} has no stream {gap.stream!r}")
                    if spec is None else self.venue.plan_recovery(
                        gap, spec, now_us=now_us, history_available=self.history is not None))
            plans.append((gap, plan))
        groups = await self._instrument_groups([g for g, p in plans if p.recoverable])
        counts: dict[int, tuple[int, int]] = {}
        errors: dict[int, str] = {}
        tasks = {asyncio.create_task(self._fetch(g, p, specs[g.stream], groups, counts, errors)): g.gap_id
                 for g, p in plans if p.recoverable}
        pending = set(tasks)
        try:
            while pending and not (give_up is not None and give_up.is_set()):
                done, pending = await asyncio.wait(pending, timeout=None if give_up is None else 0.2,
                                                   return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()                     # a database error ends the recovery
        finally:
            for task in pending:
                task.cancel()
                errors[tasks[task]] = "recovery stopped before it finished (collector shutting down)"
            await asyncio.gather(*pending, return_exceptions=True)
        for done_n, (gap, plan) in enumerate(plans, 1):
            outcome = await self._resolve(gap, plan, specs.get(gap.stream),
                                          counts.get(gap.gap_id, (0, 0)), errors.get(gap.gap_id))
            report.outcomes.append(outcome)
            if progress is not None:
                progress(done_n, len(plans), outcome)
        calls1, retries1 = self._counters()
        report.rest_calls, report.rest_retries = calls1 - calls0, retries1 - retries0
        report.seconds = time.monotonic() - started
        return report

    def _counters(self) -> tuple[int, int]:
        clients = [c for c in (self.rest, self.history) if c is not None]
        return sum(c.calls for c in clients), sum(c.retries for c in clients)

    async def _instrument_groups(self, gaps: list[Gap]) -> dict[str, tuple[str, str]]:
        names = sorted({g.instrument_name for g in gaps if g.instrument_name != "*"})
        if not names:
            return {}
        async with self.writer.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT instrument_name, base_currency, kind FROM instruments WHERE venue = $1 "
                "AND instrument_name = ANY($2::text[]) AND base_currency IS NOT NULL",
                self.venue.name, names)
        return {r[0]: (r[1], r[2]) for r in rows}

    async def _fetch(self, gap: Gap, plan: RecoveryPlan, spec, groups, counts, errors) -> None:
        client = self.history if plan.host == "history" and self.history is not None else self.rest
        got = ins = 0
        other: dict[str, tuple[int, int]] = {}
        async with self._gate:
            try:
                async for page in self.venue.recovery_pages(client, gap, plan, self.settings, groups):
                    table, rows = page if isinstance(page, tuple) else (spec.table, page)
                    n = await self.writer.write(table, rows) if rows else 0
                    if table is spec.table:
                        got, ins = got + len(rows), ins + n
                    else:
                        was = other.get(table.name, (0, 0))
                        other[table.name] = (was[0] + len(rows), was[1] + n)
            except RecoveryIncomplete as exc:
                self._incomplete[gap.gap_id] = str(exc)
            except self.venue.rest_errors as exc:
                log.warning("recovery of gap %s failed: %s", gap.gap_id, exc)
                errors[gap.gap_id] = f"REST failed: {type(exc).__name__}: {exc}"
            finally:
                counts[gap.gap_id] = (got, ins)
                if other:
                    self._other[gap.gap_id] = other

    async def _missing(self, gap: Gap, column: str, table: str) -> list[int]:
        async with self.writer.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT s FROM generate_series($1::bigint, $2::bigint) AS s WHERE NOT EXISTS "
                f"(SELECT 1 FROM {table} t WHERE t.venue = $3 AND t.instrument_name = $4 "
                f"AND t.{column} = s AND t.exchange_ts >= $5 AND t.exchange_ts <= $6) ORDER BY s",
                gap.seq_from, gap.seq_to, gap.venue, gap.instrument_name, gap.gap_start, gap.gap_end)
        return [r[0] for r in rows]

    async def _resolve(self, gap: Gap, plan: RecoveryPlan, spec, counts: tuple[int, int],
                       error: str | None) -> GapOutcome:
        got, ins = counts
        other = self._other.pop(gap.gap_id, {})
        if error is not None:
            return GapOutcome(gap, plan, GapStatus.OPEN, got, ins, error)
        if plan.method == "none":
            status, note = GapStatus.UNRECOVERABLE, plan.reason or "not recoverable"
        elif plan.method == "seq":
            missing = await self._missing(gap, spec.sequence_column, spec.table.name)
            n = gap.seq_to - gap.seq_from + 1
            if not missing:
                status = GapStatus.BACKFILLED
                note = f"{plan.host} host by {spec.sequence_column}: {got} fetched, {ins} new"
            else:
                shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
                status = GapStatus.UNRECOVERABLE
                note = (f"{plan.host} host by {spec.sequence_column} returned {n - len(missing)} of "
                        f"{n} rows; still missing {spec.sequence_column} {shown}")
        else:
            status, note = GapStatus.BACKFILLED, (f"{plan.host} host by time window: {got} rows "
                                                  f"fetched, {ins} new")
            incomplete = self._incomplete.pop(gap.gap_id, None)
            if incomplete is not None:   # the venue could serve only part of the window
                status, note = GapStatus.UNRECOVERABLE, f"{note}; {incomplete}"
        note += "".join(f"; {t}: {n} fetched, {w} written" for t, (n, w) in sorted(other.items()))
        # gap_end as read: a re-audit that extended the gap meanwhile keeps it open (the next
        # backfill fetches the longer window) instead of having it marked beyond what was fetched
        async with self.writer.pool.acquire() as conn:
            await conn.execute(
                "UPDATE data_gaps SET status = $1, reason = coalesce(reason || ' | ', '') || $2, "
                "resolved_at = now() WHERE gap_id = $3 AND status = 'open' AND gap_end = $4",
                status.value, "backfill: " + note, gap.gap_id, gap.gap_end)
        return GapOutcome(gap, plan, status, got, ins, note)


def wall_clock_us() -> int:
    """Now, µs since the epoch (UTC), through :func:`collector_daemon.core.days.utcnow` (tests
    move that clock)."""
    return to_us(days.utcnow())


async def backfill_day(dsn: str, venue: Venue, settings: VenueSettings, day: str | date, *,
                       now_us: int | None = None, max_concurrency: int = 4,
                       progress: Callable[[int, int, GapOutcome], None] | None = None) -> RecoveryReport:
    """Recover the open gaps of ``venue`` on ``day`` (the Dagster ``trades_backfill`` asset) with
    a writer and REST clients of its own (the settings' ``rest_url`` and ``history_url``).
    ``now_us`` (default wall clock) decides what is within the venue's REST horizon.

    Raises:
        asyncpg errors: the database failed (REST failures leave their gap open, in
            ``report.errors``).
    """
    writer = BatchWriter(dsn, venue=venue.name, pool_size=2, conflict_cooldown_s=3600)
    await writer.open()
    try:
        async with writer.pool.acquire() as conn:
            gaps = await open_gaps(conn, venue.name, day)
        async with budgeted_client(venue, settings, dsn, max_concurrency=max_concurrency) as rest:
            history = (venue.rest_client(settings, base_url=settings.history_url,
                                         max_concurrency=max_concurrency)
                       if settings.history_url else None)
            try:
                recovery = GapRecovery(venue, settings, writer, rest, history,
                                       max_concurrency=max_concurrency)
                return await recovery.recover(gaps, now_us=now_us or wall_clock_us(),
                                              progress=progress)
            finally:
                if history is not None:
                    await history.aclose()
    finally:
        await writer.close()

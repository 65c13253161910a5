"""REST backfill of the open trade gaps of one UTC day.

For each open gap of the day (:func:`orchestration.lib.gaps.open_gaps`) the plan of
:func:`orchestration.lib.gaps.plan_recovery` is carried out with the collector's REST client
(``DeribitRest.trades_by_seq`` / ``trades_by_time``: paging, credit pacing and retries live
there), the trades are normalised by ``messages.Trade.to_row(receive_us, "rest")`` and written
insert-if-absent by ``BatchWriter`` (trades the stream already has are skipped by the natural
key). Then each gap is resolved:

* seq range: ``backfilled`` when every trade_seq of the range is now in ``trades``, else
  ``unrecoverable`` with how many are still missing;
* time window (instrument ``*``, e.g. a disconnect or a day without live capture, or a gap
  without sequence numbers): ``backfilled`` once the window was paged to its end;
* not recoverable (quotes; windows older than 24 h without a history host): ``unrecoverable``
  with the reason, without any request;
* a REST failure that survived the client's retries leaves the gap ``open`` and is reported in
  :attr:`BackfillReport.errors` (a later run retries it).

``reason`` keeps the audit's text and appends `` | backfill: ...``; ``resolved_at`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime

import httpx
import psycopg

from collector_daemon.rows import TRADES
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues.deribit import messages as m
from collector_daemon.venues.deribit.rest import DeribitRest, DeribitRestError
from orchestration.lib.days import to_us, utcnow
from orchestration.lib.gaps import OpenGap, RecoveryPlan, open_gaps, open_gaps_by_id, plan_recovery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestConfig:
    """Where and how to call the venue's REST API.

    Attributes:
        base_url: main API, e.g. ``https://www.deribit.com/api/v2`` (or the emulator's rest_url).
        history_url: archive host for windows older than 24 h
            (``https://history.deribit.com/api/v2``); None = such windows are unrecoverable.
        currency: currency of ``*`` time windows (e.g. ``ETH``; several comma-separated).
        kinds: instrument kinds of ``*`` time windows (e.g. ``("option",)``).
        max_concurrency: simultaneous requests per client.
    """

    base_url: str
    history_url: str | None = None
    currency: str = "ETH"
    kinds: tuple[str, ...] = ("option",)
    max_concurrency: int = 4

    @property
    def currencies(self) -> tuple[str, ...]:
        """``currency`` may list several, comma-separated (``ETH,BTC``)."""
        return tuple(c.strip() for c in self.currency.split(",") if c.strip())


@dataclass(frozen=True)
class GapOutcome:
    """What the backfill did with one gap.

    Attributes:
        status: ``backfilled``, ``unrecoverable`` or ``open`` (REST failed; retry later).
        fetched: trades REST returned for it; ``inserted``: of those, new to ``trades``.
        note: the text appended to the gap's reason (or the error for ``open``).
    """

    gap: OpenGap
    plan: RecoveryPlan
    status: str
    fetched: int
    inserted: int
    note: str


@dataclass
class BackfillReport:
    """Totals of one backfill run (``rest_calls``/``rest_retries`` summed over the clients)."""

    venue: str
    day: date
    outcomes: list[GapOutcome] = field(default_factory=list)
    rest_calls: int = 0
    rest_retries: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[GapOutcome]:
        """Gaps left open because REST failed."""
        return [o for o in self.outcomes if o.status == "open"]

    def count(self, status: str) -> int:
        """Number of gaps that ended with ``status``."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def trades_fetched(self) -> int:
        """Trades returned by REST."""
        return sum(o.fetched for o in self.outcomes)

    @property
    def trades_inserted(self) -> int:
        """Trades actually added to ``trades`` (source='rest')."""
        return sum(o.inserted for o in self.outcomes)


def _ms_floor(dt: datetime) -> int:
    return to_us(dt) // 1000


def _ms_ceil(dt: datetime) -> int:
    return math.ceil(to_us(dt) / 1000)


async def _write_pages(pages, writer: BatchWriter, keep: Callable[[m.Trade], bool]) -> tuple[int, int]:
    fetched = inserted = 0
    async for page in pages:
        rows = [t.to_row(time.time_ns() // 1000, "rest") for t in page if keep(t)]
        fetched += len(rows)
        if rows:
            inserted += await writer.write(TRADES, rows)
    return fetched, inserted


def _instrument_kinds(conn: psycopg.Connection, venue: str, names: list[str]) -> dict[str, tuple[str, str]]:
    rows = conn.execute(
        "SELECT instrument_name, base_currency, kind FROM instruments "
        "WHERE venue = %s AND instrument_name = ANY(%s) AND base_currency IS NOT NULL",
        (venue, names)).fetchall()
    return {n: (c, k) for n, c, k in rows}


def _missing_seqs(conn: psycopg.Connection, gap: OpenGap) -> list[int]:
    rows = conn.execute(
        """
        SELECT s FROM generate_series(%(a)s::bigint, %(b)s::bigint) AS s
        WHERE NOT EXISTS (SELECT 1 FROM trades t WHERE t.venue = %(v)s AND t.instrument_name = %(i)s
                          AND t.trade_seq = s AND t.exchange_ts >= %(ws)s AND t.exchange_ts <= %(we)s)
        ORDER BY s
        """, {"a": gap.seq_from, "b": gap.seq_to, "v": gap.venue, "i": gap.instrument_name,
              "ws": gap.gap_start, "we": gap.gap_end}).fetchall()
    return [r[0] for r in rows]


def backfill_day(dsn: str, venue: str, day: str | date, rest: RestConfig, *,
                 now: datetime | None = None,
                 progress: Callable[[int, int, GapOutcome], None] | None = None) -> BackfillReport:
    """Fill the open trade gaps of ``venue`` on ``day`` from REST and resolve them (see module
    docstring). ``now`` (default wall clock) decides what is within Deribit's 24 h window.
    ``progress(done, total, outcome)`` is called after each gap.

    Raises:
        psycopg.Error / asyncpg errors: the database failed (REST failures that survive the
            client's retries do not raise; they leave their gap open and are listed in
            ``report.errors``).
    """
    with psycopg.connect(dsn) as conn:
        gaps = open_gaps(conn, venue, day)
    report = BackfillReport(venue, day if isinstance(day, date) else date.fromisoformat(day))
    return _backfill(dsn, venue, gaps, rest, report, now=now, progress=progress)


def backfill_gaps(dsn: str, venue: str, gap_ids: list[int], rest: RestConfig, *,
                  now: datetime | None = None,
                  give_up: threading.Event | None = None) -> BackfillReport:
    """Fill and resolve the given open gaps (the collector calls this right after it detects
    them: a trade_seq jump or a reconnect window). Gaps no longer open are skipped. Same
    rules, errors and report as :func:`backfill_day`; ``report.day`` is today (UTC).

    ``give_up`` (set from another thread, e.g. when the collector's shutdown time is up) stops
    the requests still running within ~0.2 s; their gaps stay ``open`` with the reason in
    ``report.errors``, and the trades already fetched stay stored."""
    with psycopg.connect(dsn) as conn:
        gaps = open_gaps_by_id(conn, gap_ids)
    return _backfill(dsn, venue, gaps, rest, BackfillReport(venue, utcnow().date()), now=now,
                     give_up=give_up)


def _backfill(dsn: str, venue: str, gaps: list[OpenGap], rest: RestConfig, report: BackfillReport,
              *, now: datetime | None,
              progress: Callable[[int, int, GapOutcome], None] | None = None,
              give_up: threading.Event | None = None) -> BackfillReport:
    started = time.monotonic()
    now = now or utcnow()
    specific = sorted({g.instrument_name for g in gaps if g.instrument_name != "*"})
    if specific:
        with psycopg.connect(dsn) as conn:
            inst_kind = _instrument_kinds(conn, venue, specific)
    else:
        inst_kind = {}
    plans = [(g, plan_recovery(g, now=now, history_available=rest.history_url is not None))
             for g in gaps]
    fetched: dict[int, tuple[int, int]] = {}
    errors: dict[int, str] = {}
    if any(p.recoverable for _, p in plans):
        fetched, errors, calls, retries = asyncio.run(
            _fetch(dsn, venue, plans, rest, inst_kind, give_up))
        report.rest_calls, report.rest_retries = calls, retries
    done = 0
    with psycopg.connect(dsn) as conn:
        for gap, plan in plans:
            outcome = _resolve(conn, gap, plan, fetched.get(gap.gap_id, (0, 0)),
                               errors.get(gap.gap_id))
            report.outcomes.append(outcome)
            done += 1
            if progress is not None:
                progress(done, len(plans), outcome)
    report.seconds = time.monotonic() - started
    return report


async def _fetch(dsn: str, venue: str, plans: list[tuple[OpenGap, RecoveryPlan]], rest: RestConfig,
                 inst_kind: dict[str, tuple[str, str]], give_up: threading.Event | None = None):
    fetched: dict[int, tuple[int, int]] = {}
    errors: dict[int, str] = {}
    writer = BatchWriter(dsn, venue=venue, pool_size=2, conflict_cooldown_s=3600)
    await writer.open()
    main = DeribitRest(rest.base_url, max_concurrency=rest.max_concurrency)
    history = (DeribitRest(rest.history_url, max_concurrency=rest.max_concurrency)
               if rest.history_url else None)
    gate = asyncio.Semaphore(rest.max_concurrency)

    async def one(gap: OpenGap, plan: RecoveryPlan) -> None:
        client = history if plan.host == "history" and history is not None else main
        async with gate:
            try:
                if plan.method == "seq":
                    fetched[gap.gap_id] = await _write_pages(
                        client.trades_by_seq(gap.instrument_name, gap.seq_from, gap.seq_to),
                        writer, lambda t: t.trade_seq is not None and gap.seq_from <= t.trade_seq <= gap.seq_to)
                elif plan.method == "time":
                    start_ms, end_ms = _ms_floor(gap.gap_start), _ms_ceil(gap.gap_end)
                    if gap.instrument_name == "*":
                        targets = [(c, k) for c in rest.currencies for k in rest.kinds]
                        keep = lambda t: True  # noqa: E731
                    else:
                        targets = [inst_kind.get(gap.instrument_name,
                                                 (gap.instrument_name.split("-")[0], rest.kinds[0]))]
                        keep = lambda t: t.instrument_name == gap.instrument_name  # noqa: E731
                    got = ins = 0
                    for currency, kind in targets:
                        f, i = await _write_pages(
                            client.trades_by_time(currency, start_ms, end_ms, kind=kind),
                            writer, lambda t: keep(t) and start_ms <= t.timestamp <= end_ms)
                        got, ins = got + f, ins + i
                    fetched[gap.gap_id] = (got, ins)
            except (DeribitRestError, httpx.HTTPError) as exc:
                log.warning("backfill of gap %s failed: %s", gap.gap_id, exc)
                errors[gap.gap_id] = f"REST failed: {type(exc).__name__}: {exc}"

    tasks = {asyncio.create_task(one(g, p)): g.gap_id for g, p in plans if p.recoverable}
    try:
        pending = set(tasks)
        while pending and not (give_up is not None and give_up.is_set()):
            done, pending = await asyncio.wait(pending, timeout=None if give_up is None else 0.2,
                                               return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()                         # a database error ends the backfill
        for task in pending:
            task.cancel()
            errors[tasks[task]] = "recovery stopped before it finished (collector shutting down)"
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        calls = main.calls + (history.calls if history else 0)
        retries = main.retries + (history.retries if history else 0)
        await main.aclose()
        if history is not None:
            await history.aclose()
        await writer.close()
    return fetched, errors, calls, retries


def _resolve(conn: psycopg.Connection, gap: OpenGap, plan: RecoveryPlan, counts: tuple[int, int],
             error: str | None) -> GapOutcome:
    got, ins = counts
    if error is not None:
        return GapOutcome(gap, plan, "open", got, ins, error)
    if plan.method == "none":
        status, note = "unrecoverable", plan.reason or "not recoverable"
    elif plan.method == "seq":
        missing = _missing_seqs(conn, gap)
        n = gap.seq_to - gap.seq_from + 1
        if not missing:
            status, note = "backfilled", f"{plan.host} host by trade_seq: {got} fetched, {ins} new"
        else:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            status = "unrecoverable"
            note = (f"{plan.host} host by trade_seq returned {n - len(missing)} of {n} trades; "
                    f"still missing trade_seq {shown}")
    else:
        status, note = "backfilled", (f"{plan.host} host by time window: {got} trades fetched, "
                                      f"{ins} new")
    # gap_end as read: a re-audit that extended the gap meanwhile keeps it open (the next
    # backfill fetches the longer window) instead of having it marked beyond what was fetched
    with conn.transaction():
        conn.execute(
            "UPDATE data_gaps SET status = %s, reason = coalesce(reason || ' | ', '') || %s, "
            "resolved_at = now() WHERE gap_id = %s AND status = 'open' AND gap_end = %s",
            (status, "backfill: " + note, gap.gap_id, gap.gap_end))
    return GapOutcome(gap, plan, status, got, ins, note)

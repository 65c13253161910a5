"""Gap detection in the daemon, and recovery right after it.

What is detected (recorded in ``data_gaps`` with exact bounds, ``detected_by`` naming the rule):

* ``trade_seq``: trade_seq is per instrument and +1 per trade (measured on the real captures,
  docs/reliability.md). The last stored trade_seq per instrument is kept (seeded from the
  database at start); a jump opens a ``trades`` gap for that instrument with the missing range
  ``seq_from..seq_to`` (inclusive) and the exchange times of the trades around it. A trade_seq
  at or below the last one is a duplicate (reconnect overlap, REST) and is ignored.
* ``disconnect``: every window between the last frame before a disconnect and the confirmed
  resubscription is a gap for every stream of that connection: ``quotes`` (``unrecoverable``: the
  venue serves no ticker history) and ``trades`` (``open``, recovered below), instrument ``*``.

Recovery: open trade gaps are handed, oldest first, to the shared REST backfill
(``orchestration.lib.backfill.backfill_gaps``: by trade_seq range when known, else by currency
and time window within Deribit's 24 h horizon; paging, credit pacing, retries and
insert-if-absent writes with ``source = 'rest'``), which marks each gap ``backfilled`` or
``unrecoverable`` with the reason. Windows beyond the horizon stay ``open`` for the Dagster
``trades_backfill`` asset, which owns history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from collector_daemon.rows import TRADES

log = logging.getLogger(__name__)

_SEQ = TRADES.columns.index("trade_seq")
_NAME = TRADES.columns.index("instrument_name")
_TS = TRADES.columns.index("exchange_ts")

#: ``recover(gap_ids) -> None``: resolves the given open gaps (runs the shared REST backfill).
RecoverFn = Callable[[list[int]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PendingGap:
    """A gap found in the stream, not yet stored. Times in µs since the epoch (UTC)."""

    stream: str
    instrument_name: str
    gap_start_us: int
    gap_end_us: int
    seq_from: int | None
    seq_to: int | None
    detected_by: str
    status: str
    reason: str


class GapKeeper:
    """Watches the trade stream for trade_seq jumps, records gaps and triggers their recovery.

    Args:
        venue: venue name stored in ``data_gaps``.
        pool: an asyncpg pool whose connections use ``writer.init_connection`` (µs timestamps).
        recover: coroutine that resolves open gap ids over REST; None = record only.
        seed_days: how far back the last trade_seq per instrument is looked up at start.
    """

    def __init__(self, venue: str, pool: asyncpg.Pool, recover: RecoverFn | None = None, *,
                 seed_days: int = 3) -> None:
        self.venue = venue
        self.pool = pool
        self.recover = recover
        self.seed_days = seed_days
        self.last: dict[str, tuple[int, int]] = {}     # instrument -> (trade_seq, exchange µs)
        self._pending: list[PendingGap] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.gaps_recorded = 0
        self.seq_gaps = 0

    async def seed(self) -> int:
        """Load the newest stored trade_seq per instrument; returns how many instruments."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (instrument_name) instrument_name, trade_seq, exchange_ts "
                "FROM trades WHERE venue = $1 AND trade_seq IS NOT NULL "
                "AND exchange_ts > now() - make_interval(days => $2) "
                "ORDER BY instrument_name, trade_seq DESC", self.venue, self.seed_days)
        self.last = {r["instrument_name"]: (r["trade_seq"], r["exchange_ts"]) for r in rows}
        return len(self.last)

    def observe_trades(self, rows: list[tuple]) -> None:
        """Check the trade_seq of live trade rows (``rows.TRADES`` order). Called per frame."""
        last = self.last
        for row in rows:
            seq = row[_SEQ]
            if seq is None:
                continue
            name = row[_NAME]
            prev = last.get(name)
            if prev is None or seq > prev[0]:
                last[name] = (seq, row[_TS])
                if prev is not None and seq > prev[0] + 1:
                    self.seq_gaps += 1
                    self._add(PendingGap("trades", name, prev[1], row[_TS], prev[0] + 1, seq - 1,
                                         "trade_seq", "open",
                                         f"trade_seq jumped from {prev[0]} to {seq}"))

    def lost_window(self, connection_id: str, start_us: int, end_us: int | None,
                    streams: tuple[str, ...] = ("quotes", "trades")) -> None:
        """Record the window a reconnect lost, in exchange time (µs). ``end_us`` None (the
        connection stopped before data resumed) extends the window to now."""
        if end_us is None:
            end_us = max(start_us, time.time_ns() // 1000)
        for stream in streams:
            if stream == "quotes":
                self._add(PendingGap("quotes", "*", start_us, end_us, None, None, "disconnect",
                                     "unrecoverable", f"{connection_id} disconnected; the venue "
                                     "serves no ticker history"))
            else:
                self._add(PendingGap("trades", "*", start_us, end_us, None, None, "disconnect",
                                     "open", f"{connection_id} disconnected"))

    def _add(self, gap: PendingGap) -> None:
        self._pending.append(gap)
        self._wake.set()

    def start(self) -> asyncio.Task:
        """Store pending gaps and recover the open ones in a background task, until :meth:`close`."""
        self._task = asyncio.create_task(self._run(), name="gaps")
        return self._task

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        """At shutdown: let the recovery in flight finish (it is never abandoned half-way: the
        caller bounds it through the recover function's own give-up signal), then store and
        recover the gaps still pending."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def flush(self, recover: bool = True) -> list[int]:
        """Store every pending gap now and (with ``recover``) recover the open ones; returns
        their gap ids."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        async with self.pool.acquire() as conn:
            ids = [await conn.fetchval(
                "INSERT INTO data_gaps (venue, stream, instrument_name, gap_start, gap_end, seq_from, "
                "seq_to, detected_by, status, reason, resolved_at) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                "$8, $9, $10, CASE WHEN $9 = 'open' THEN NULL ELSE now() END) RETURNING gap_id",
                self.venue, g.stream, g.instrument_name, g.gap_start_us, g.gap_end_us, g.seq_from,
                g.seq_to, g.detected_by, g.status, g.reason) for g in pending]
        self.gaps_recorded += len(ids)
        open_ids = [i for i, g in zip(ids, pending) if g.status == "open"]
        for g in pending:
            log.warning("gap: %s %s %s..%s%s (%s)", g.stream, g.instrument_name, g.gap_start_us,
                        g.gap_end_us, f" seq {g.seq_from}..{g.seq_to}" if g.seq_from is not None else "",
                        g.detected_by)
        if open_ids and recover and self.recover is not None:
            try:
                await self.recover(open_ids)
            except Exception as exc:  # noqa: BLE001 - the gap stays open; Dagster retries it
                log.error("recovery of gaps %s failed: %s", open_ids, exc)
        return ids

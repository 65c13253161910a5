"""Kraken trade history over REST for any pair and range, resumable (``tickvault history
kraken-trades``).

``/0/public/Trades`` is paged by its ``since`` cursor (ns; ``result.last`` is the next one) from
``since`` (0 = the pair's first trade) until a page passes ``until`` or the newest trade is
reached. The client paces Trades at one request per second per pair and retries Kraken's
rate-limit errors (``EAPI:Rate limit exceeded``, ``EGeneral:Too many requests``) with backoff
(:class:`collector_daemon.venues.kraken.rest.KrakenRest`).

Each page is committed in **one transaction**: its valid rows into ``trades`` (insert-if-absent on
the natural key and on the trade id: REST's float-second time cannot carry every µs, so a trade
the stream stored may differ by a µs), its invalid rows into ``rejected_messages`` with the reason (price or volume not
positive and finite, implausible time, side/type outside their sets, a bad trade id), and the next
cursor into ``sync_state`` (venue ``kraken``, the pair, stream ``trades``). So a crash loses at
most the page in flight: the next run resumes from the stored cursor, and rows already stored
are skipped by the key (no duplicate, no hole). A re-run of a range already synced starts at the
stored cursor and inserts nothing (with ``until`` already reached it sends no request at all).

``sync_state.range_start`` is where the synced range begins: a run asking for an earlier
``since`` starts there again (rows already stored are skipped) and widens the range.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from collector_daemon.rows import REJECTED_MESSAGES, TRADES
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues import get_venue
from collector_daemon.venues.kraken import messages as m
from collector_daemon.venues.kraken.rest import KrakenRest, KrakenRestError

log = logging.getLogger(__name__)

STREAM = "trades"
#: A trade already stored under its trade id: REST gives the time as float seconds, which cannot
#: carry every µs exactly, so the same trade from the stream may sit a µs apart (a different
#: natural key). The id (``trade_seq``, unique per pair) decides, within a second of the time.
_SAME_TRADE = ("NOT EXISTS (SELECT 1 FROM trades t WHERE t.venue = s.venue AND "
               "t.instrument_name = s.instrument_name AND t.trade_seq = s.trade_seq AND "
               "t.exchange_ts BETWEEN s.exchange_ts - interval '1 second' AND "
               "s.exchange_ts + interval '1 second')")
#: ``rejected_messages.connection_id`` of rows this module rejects.
SOURCE_ID = "rest-history"


@dataclass
class SyncSummary:
    """What one run did (``pages``/``requests`` of this run; ``resumed_from``: the stored cursor
    the run started at, None for a fresh range)."""

    pair: str
    rest_name: str
    since_ns: int
    resumed_from: int | None = None
    cursor_ns: int = 0
    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    rejected: int = 0
    requests: int = 0
    retries: int = 0
    done: bool = False

    def line(self) -> str:
        """One summary line for the terminal."""
        start = f"resumed at cursor {self.resumed_from}" if self.resumed_from is not None else \
            f"from {self.since_ns}"
        return (f"kraken trades {self.pair} ({self.rest_name}) {start}: {self.pages} pages, "
                f"{self.fetched} trades fetched, {self.inserted} inserted, "
                f"{self.fetched - self.inserted - self.rejected} already present, "
                f"{self.rejected} rejected; cursor {self.cursor_ns}"
                f"{' (complete)' if self.done else ''}; {self.requests} requests, {self.retries} retries")


async def sync_trades(dsn: str, pair: str, *, since_ns: int = 0, until_ns: int | None = None,
                      rest_url: str | None = None, pair_interval_s: float | None = None,
                      on_page: Callable[[SyncSummary], None] | None = None) -> SyncSummary:
    """Fetch ``pair``'s trades (WS v2 symbol, ``BTC/USD``) from ``since_ns`` to ``until_ns`` (ns
    since the epoch, UTC; None = now) into ``trades``, resuming from ``sync_state``.

    Args:
        rest_url / pair_interval_s: override the Kraken settings' (``TICKVAULT_KRAKEN_REST_URL``,
            ``TICKVAULT_KRAKEN_REST_PAIR_INTERVAL_S``).
        on_page: called after each committed page with the running summary.

    Raises:
        ValueError: the pair is not listed by AssetPairs.
        KrakenRestError: REST failed after the client's retries (pages committed so far stay,
            with their cursor: the next run resumes).
        asyncpg errors: the database failed.
    """
    venue = get_venue(m.VENUE)
    settings = venue.load_settings()
    writer = BatchWriter(dsn, venue=m.VENUE, pool_size=1)
    await writer.open()
    try:
        async with KrakenRest(rest_url or settings.rest_url,
                              pair_interval_s=settings.rest_pair_interval_s
                              if pair_interval_s is None else pair_interval_s) as rest:
            names = await rest.rest_pairs([pair])
            if pair not in names:
                raise ValueError(f"pair {pair!r} is not listed by Kraken's AssetPairs (WS v2 "
                                 "symbols such as BTC/USD)")
            summary = SyncSummary(pair, names[pair], since_ns)
            async with writer.pool.acquire() as conn:
                state = await conn.fetchrow(
                    "SELECT range_start, cursor, done FROM sync_state WHERE venue = $1 AND "
                    "instrument_name = $2 AND stream = $3", m.VENUE, pair, STREAM)
                cursor, range_start = since_ns, since_ns
                if state is not None and int(state["range_start"]) <= since_ns:
                    range_start = int(state["range_start"])
                    cursor = max(since_ns, int(state["cursor"]))
                    summary.resumed_from = cursor
                summary.cursor_ns = cursor
                if until_ns is not None and cursor >= until_ns:
                    summary.done = True
                    return summary
                calls0 = rest.calls
                async for raw, nxt in rest.trade_pages(names[pair], cursor):
                    rows, rejects = _validate(pair, raw)
                    passed = until_ns is not None and any(r[4] * 1000 > until_ns for r in rows)
                    if until_ns is not None:
                        rows = [r for r in rows if r[4] * 1000 <= until_ns]
                    finished = passed or nxt <= cursor or not raw
                    if passed:   # the next range starts at the bound, not past trades left out
                        nxt = until_ns
                    async with conn.transaction():
                        inserted = await BatchWriter.insert_absent(conn, TRADES, rows, _SAME_TRADE) \
                            if rows else 0
                        if rejects:
                            await conn.copy_records_to_table(REJECTED_MESSAGES.name, records=rejects,
                                                             columns=REJECTED_MESSAGES.columns)
                        await conn.execute(
                            "INSERT INTO sync_state (venue, instrument_name, stream, range_start, "
                            "cursor, done, pages, rows_inserted, rows_rejected, updated_at) "
                            "VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, now()) "
                            "ON CONFLICT (venue, instrument_name, stream) DO UPDATE SET "
                            "range_start = EXCLUDED.range_start, cursor = EXCLUDED.cursor, "
                            "done = EXCLUDED.done, pages = sync_state.pages + 1, "
                            "rows_inserted = sync_state.rows_inserted + EXCLUDED.rows_inserted, "
                            "rows_rejected = sync_state.rows_rejected + EXCLUDED.rows_rejected, "
                            "updated_at = now()",
                            m.VENUE, pair, STREAM, str(range_start), str(max(nxt, cursor)), finished,
                            inserted, len(rejects))
                    summary.pages += 1
                    summary.inserted += inserted
                    summary.fetched += len(raw)
                    summary.rejected += len(rejects)
                    summary.cursor_ns = cursor = max(nxt, cursor)
                    summary.requests = rest.calls - calls0
                    summary.retries = rest.retries
                    if on_page is not None:
                        on_page(summary)
                    if finished:
                        summary.done = True
                        break
            return summary
    finally:
        await writer.close()


def _validate(pair: str, raw: list) -> tuple[list[tuple], list[tuple]]:
    """(``trades`` rows, ``rejected_messages`` rows) of one page; each invalid row is kept with
    the reason."""
    now_us = time.time_ns() // 1000
    rows, rejects = [], []
    for r in raw:
        try:
            rows.append(m.rest_trade_row(pair, r, now_us))
        except m.BadValue as exc:
            text = json.dumps(r)
            rejects.append((now_us, m.VENUE, SOURCE_ID, f"Trades {pair}: {exc}"[:1000],
                            text[:65536], len(text.encode())))
    if rejects:
        log.warning("%s: %d invalid trade(s) rejected (rejected_messages)", pair, len(rejects))
    return rows, rejects


__all__ = ["KrakenRestError", "SyncSummary", "sync_trades"]

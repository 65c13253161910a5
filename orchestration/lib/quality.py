"""Data-quality checks over one UTC day, run straight against the database.

Every function returns a :class:`CheckOutcome` (pass/fail, numbers, a few sample rows); the
Dagster asset checks only wrap them (per venue). ``venue`` None means every venue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from collector_daemon.core import days
from collector_daemon.core.days import day_window, from_us
from orchestration.lib.candles import DAY_INTERVALS, trade_sources
from orchestration.lib.gaps import SilenceRule, _trade_seq_holes, expected_instruments


@dataclass
class CheckOutcome:
    """Result of one check: ``passed`` and JSON-able ``metadata`` (counts, samples)."""

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def _rows(cur_rows, cols: list[str]) -> list[dict]:
    return [{c: (v.isoformat() if isinstance(v, datetime) else v) for c, v in zip(cols, r)}
            for r in cur_rows]


def _window(day: str | date, now: datetime | None) -> tuple[datetime, datetime]:
    start, end = day_window(day)
    return start, min(end, now or days.utcnow())


# --- duplicates -------------------------------------------------------------------------------

def trade_duplicates(conn: psycopg.Connection, day: str | date, *, venue: str | None = None,
                     samples: int = 10) -> CheckOutcome:
    """Trades of the day (of ``venue``; None = every venue) sharing (venue, instrument_name,
    trade_id) — the natural identity of a trade whatever its timestamp — or (venue,
    instrument_name, trade_seq) with different ids. Passes when both are 0."""
    start, end = day_window(day)
    p = {"s": start, "e": end, "n": samples, "v": venue}
    by_id = conn.execute(
        "SELECT venue, instrument_name, trade_id, count(*) FROM trades "
        "WHERE exchange_ts >= %(s)s AND exchange_ts < %(e)s AND venue = coalesce(%(v)s, venue) "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1 ORDER BY 4 DESC, 1, 2, 3", p).fetchall()
    by_seq = conn.execute(
        "SELECT venue, instrument_name, trade_seq, count(DISTINCT trade_id) FROM trades "
        "WHERE exchange_ts >= %(s)s AND exchange_ts < %(e)s AND venue = coalesce(%(v)s, venue) "
        "AND trade_seq IS NOT NULL "
        "GROUP BY 1, 2, 3 HAVING count(DISTINCT trade_id) > 1 ORDER BY 4 DESC, 1, 2, 3", p).fetchall()
    total = conn.execute("SELECT count(*) FROM trades WHERE exchange_ts >= %(s)s AND exchange_ts < %(e)s "
                         "AND venue = coalesce(%(v)s, venue)", p).fetchone()[0]
    return CheckOutcome(not by_id and not by_seq, {
        "trades": total,
        "duplicate_trade_ids": len(by_id),
        "duplicate_trade_seqs": len(by_seq),
        "samples": _rows(by_id[:samples], ["venue", "instrument_name", "trade_id", "copies"])
        + _rows(by_seq[:samples], ["venue", "instrument_name", "trade_seq", "trade_ids"]),
    })


def quote_duplicates(conn: psycopg.Connection, day: str | date, *, venue: str | None = None,
                     samples: int = 10) -> CheckOutcome:
    """Quotes of the day (of ``venue``; None = every venue) sharing the natural key (exchange_ts,
    instrument_name, venue). Passes when 0 (the unique constraint should make it so; this
    verifies it on the data)."""
    start, end = day_window(day)
    dup = conn.execute(
        "SELECT venue, instrument_name, exchange_ts, count(*) FROM quotes "
        "WHERE exchange_ts >= %s AND exchange_ts < %s AND venue = coalesce(%s, venue) "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1 ORDER BY 4 DESC LIMIT 1000", (start, end, venue)).fetchall()
    total = conn.execute("SELECT count(*) FROM quotes WHERE exchange_ts >= %s AND exchange_ts < %s "
                         "AND venue = coalesce(%s, venue)", (start, end, venue)).fetchone()[0]
    return CheckOutcome(not dup, {"quotes": total, "duplicate_keys": len(dup),
                                  "samples": _rows(dup[:samples], ["venue", "instrument_name",
                                                                   "exchange_ts", "copies"])})


# --- continuity -------------------------------------------------------------------------------

def trade_seq_continuity(conn: psycopg.Connection, venue: str, day: str | date, *,
                         now: datetime | None = None, rule: SilenceRule = SilenceRule(),
                         samples: int = 20) -> CheckOutcome:
    """trade_seq holes still present in ``trades`` for the day (same rule as the audit), each with
    the status of its ``data_gaps`` row. Passes when there is no hole."""
    start, end = _window(day, now)
    holes = _trade_seq_holes(conn, venue, start, end, rule) if end > start else []
    status = {(r[0], r[1], r[2]): (r[3], r[4]) for r in conn.execute(
        "SELECT instrument_name, seq_from, seq_to, status, reason FROM data_gaps "
        "WHERE venue = %s AND seq_from IS NOT NULL "
        "AND gap_end >= %s AND gap_start < %s ORDER BY gap_id", (venue, start - timedelta(days=7), end))}
    listed = [{"instrument_name": h.instrument_name, "seq_from": h.seq_from, "seq_to": h.seq_to,
               "gap_start": from_us(h.gap_start).isoformat(), "gap_end": from_us(h.gap_end).isoformat(),
               "status": status.get((h.instrument_name, h.seq_from, h.seq_to), ("not recorded",))[0]}
              for h in holes]
    open_rows = conn.execute(
        "SELECT instrument_name, seq_from, seq_to, gap_start, gap_end, detected_by FROM data_gaps "
        "WHERE venue = %s AND stream = 'trades' AND status = 'open' "
        "AND (audit_day = %s OR (audit_day IS NULL AND gap_start < %s AND gap_end >= %s)) "
        "ORDER BY gap_start", (venue, start.date(), end, start)).fetchall()
    return CheckOutcome(not holes, {
        "holes": len(holes),
        "missing_trades": sum(h.seq_to - h.seq_from + 1 for h in holes),
        "unrecoverable_holes": sum(1 for x in listed if x["status"] == "unrecoverable"),
        "open_trade_gaps": len(open_rows),
        "holes_list": listed[:samples],
        "open_gaps_list": _rows(open_rows[:samples], ["instrument_name", "seq_from", "seq_to",
                                                      "gap_start", "gap_end", "detected_by"]),
    })


# --- quotes -----------------------------------------------------------------------------------

def quote_freshness(conn: psycopg.Connection, venue: str, day: str | date, *,
                    now: datetime | None = None, max_age_s: float = 120.0,
                    instrument_max_age_s: float = 900.0, samples: int = 20) -> CheckOutcome:
    """How recent the newest quote of the day is, relative to now for the current day or to the
    day's end for a past day. Passes when that age <= ``max_age_s``. Instruments quoted that day
    whose last quote is older than ``instrument_max_age_s`` are listed (not failing)."""
    now = now or days.utcnow()
    start, end = day_window(day)
    ref = min(now, end)
    if ref <= start:
        return CheckOutcome(True, {"evaluated": False, "note": "the day has not started"})
    rows = conn.execute(
        "SELECT instrument_name, max(exchange_ts), max(receive_ts) FROM quotes "
        "WHERE venue = %s AND exchange_ts >= %s AND exchange_ts < %s GROUP BY 1 ORDER BY 2",
        (venue, start, ref)).fetchall()
    if not rows:
        return CheckOutcome(False, {"reference_time": ref.isoformat(), "instruments": 0,
                                    "note": "no quote at all in the window"})
    newest = max(r[1] for r in rows)
    age = (ref - newest).total_seconds()
    stale = [r for r in rows if (ref - r[1]).total_seconds() > instrument_max_age_s]
    return CheckOutcome(age <= max_age_s, {
        "reference_time": ref.isoformat(),
        "current_day": now < end,
        "newest_quote": newest.isoformat(),
        "age_s": round(age, 3),
        "max_age_s": max_age_s,
        "instruments": len(rows),
        "stale_instruments": len(stale),
        "stale_list": [{"instrument_name": r[0], "last_quote": r[1].isoformat(),
                        "age_s": round((ref - r[1]).total_seconds(), 1)} for r in stale[:samples]],
    })


def quote_coverage(conn: psycopg.Connection, venue: str, day: str | date, *,
                   now: datetime | None = None, threshold: float = 0.98,
                   samples: int = 50) -> CheckOutcome:
    """Per instrument subscribed for the whole (elapsed) day: the share of its minutes that hold
    at least one quote. Passes when every such instrument reaches ``threshold``.

    "Subscribed all day" = in every ``universe_versions`` set in force during the window and
    alive (created before, expiring after) the whole window; without subscription history,
    instruments quoted in both the first and the last hour of the window.
    """
    start, end = _window(day, now)
    if end <= start:
        return CheckOutcome(True, {"evaluated": False, "note": "the day has not started"})
    minutes = max(1, int((end - start).total_seconds() // 60))
    expected = expected_instruments(conn, venue, start, end, all_day=True)
    if expected is not None:
        basis = "universe_versions"
        names = sorted(n for n, in conn.execute(
            """
            SELECT e.n FROM unnest(%(names)s::text[]) AS e(n)
            LEFT JOIN instruments i ON i.venue = %(v)s AND i.instrument_name = e.n
            WHERE coalesce(i.creation_timestamp, %(s)s) <= %(s)s
              AND coalesce(i.expiration_timestamp, %(e)s) >= %(e)s
            """, {"names": sorted(expected), "v": venue, "s": start, "e": end}))
    else:
        basis = "quoted in the first and last hour"
        hour = timedelta(hours=1)
        names = [n for n, in conn.execute(
            "SELECT instrument_name FROM quotes WHERE venue = %(v)s AND exchange_ts >= %(s)s "
            "AND exchange_ts < %(s1)s INTERSECT SELECT instrument_name FROM quotes "
            "WHERE venue = %(v)s AND exchange_ts >= %(e1)s AND exchange_ts < %(e)s ORDER BY 1",
            {"v": venue, "s": start, "s1": min(end, start + hour), "e1": max(start, end - hour),
             "e": end})]
    covered = dict(conn.execute(
        "SELECT instrument_name, count(DISTINCT date_trunc('minute', exchange_ts)) FROM quotes "
        "WHERE venue = %s AND exchange_ts >= %s AND exchange_ts < %s "
        "AND instrument_name = ANY(%s) GROUP BY 1", (venue, start, end, names)).fetchall()) if names else {}
    per = sorted(((n, covered.get(n, 0) / minutes) for n in names), key=lambda x: (x[1], x[0]))
    below = [(n, c) for n, c in per if c < threshold]
    return CheckOutcome(not below, {
        "basis": basis,
        "minutes": minutes,
        "threshold": threshold,
        "instruments": len(per),
        "below_threshold": len(below),
        "min_coverage": round(per[0][1], 6) if per else None,
        "coverage": {n: round(c, 6) for n, c in (below or per)[:samples]},
    })


def crossed_quotes(conn: psycopg.Connection, day: str | date, *, venue: str | None = None,
                   samples: int = 10) -> CheckOutcome:
    """Quotes (of ``venue``; None = every venue) with best_bid_price > best_ask_price where both
    sides are present (Deribit sends price 0 / amount 0 for an empty side; those are not
    crossed). Passes when none."""
    start, end = day_window(day)
    where = ("exchange_ts >= %(s)s AND exchange_ts < %(e)s AND best_bid_price > best_ask_price "
             "AND best_ask_price > 0 AND best_bid_amount > 0 AND best_ask_amount > 0 "
             "AND venue = coalesce(%(v)s, venue)")
    p = {"s": start, "e": end, "n": samples, "v": venue}
    per = conn.execute(f"SELECT venue, instrument_name, count(*) FROM quotes WHERE {where} "
                       "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2", p).fetchall()
    sample = conn.execute(f"SELECT venue, instrument_name, exchange_ts, best_bid_price, best_ask_price "
                          f"FROM quotes WHERE {where} ORDER BY exchange_ts LIMIT %(n)s", p).fetchall()
    return CheckOutcome(not per, {
        "crossed": sum(r[2] for r in per),
        "instruments": len(per),
        "per_instrument": {f"{v}:{n}": c for v, n, c in per[:samples]},
        "samples": _rows(sample, ["venue", "instrument_name", "exchange_ts", "best_bid_price",
                                  "best_ask_price"]),
    })


#: Sane ranges, inclusive: (column, low, high). Prices and amounts as Deribit sends them
#: (options: base coin; futures: USD); IVs in percent.
TRADE_RANGES: list[tuple[str, float, float]] = [
    ("price", 1e-12, 1e7), ("amount", 1e-12, 1e9), ("iv", 0.0, 1000.0),
    ("index_price", 1e-12, 1e8), ("mark_price", 0.0, 1e7),
]
QUOTE_RANGES: list[tuple[str, float, float]] = [
    ("best_bid_price", 0.0, 1e7), ("best_ask_price", 0.0, 1e7), ("mark_price", 0.0, 1e7),
    ("best_bid_amount", 0.0, 1e9), ("best_ask_amount", 0.0, 1e9), ("open_interest", 0.0, 1e12),
    ("mark_iv", 0.0, 1000.0), ("bid_iv", 0.0, 1000.0), ("ask_iv", 0.0, 1000.0),
]


def value_ranges(conn: psycopg.Connection, table: str, day: str | date, *, venue: str | None = None,
                 samples: int = 10) -> CheckOutcome:
    """Rows of ``trades`` or ``quotes`` of the day (of ``venue``; None = every venue) with a
    value outside :data:`TRADE_RANGES` / :data:`QUOTE_RANGES` (NaN and infinities included).
    NULLs are allowed. Passes when none."""
    ranges = {"trades": TRADE_RANGES, "quotes": QUOTE_RANGES}[table]
    start, end = day_window(day)
    counts = {}
    bad_any = " OR ".join(f"NOT ({c} BETWEEN {lo!r} AND {hi!r})" for c, lo, hi in ranges)
    sel = ", ".join(f"count(*) FILTER (WHERE NOT ({c} BETWEEN {lo!r} AND {hi!r}))" for c, lo, hi in ranges)
    row = conn.execute(f"SELECT count(*), {sel} FROM {table} WHERE exchange_ts >= %s AND exchange_ts < %s "
                       "AND venue = coalesce(%s, venue)", (start, end, venue)).fetchone()
    total = row[0]
    for (c, lo, hi), n in zip(ranges, row[1:]):
        if n:
            counts[f"{c} outside [{lo:g}, {hi:g}]"] = n
    cols = ["venue", "instrument_name", "exchange_ts"] + [c for c, _, _ in ranges]
    sample = conn.execute(f"SELECT {', '.join(cols)} FROM {table} WHERE exchange_ts >= %s "
                          f"AND exchange_ts < %s AND venue = coalesce(%s, venue) AND ({bad_any}) "
                          "ORDER BY exchange_ts LIMIT %s", (start, end, venue, samples)).fetchall() if counts else []
    return CheckOutcome(not counts, {"rows": total, "violations": counts,
                                     "samples": _rows(sample, cols)})


def latest_open_interest(conn: psycopg.Connection, venue: str, since: datetime,
                         until: datetime) -> dict[str, float]:
    """instrument_name -> open_interest of its latest quote in ``[since, until)``."""
    return dict(conn.execute(
        "SELECT DISTINCT ON (instrument_name) instrument_name, open_interest FROM quotes "
        "WHERE venue = %s AND exchange_ts >= %s AND exchange_ts < %s AND open_interest IS NOT NULL "
        "ORDER BY instrument_name, exchange_ts DESC", (venue, since, until)).fetchall())


def open_interest_vs_rest(quoted: dict[str, float], rest: dict[str, float], *,
                          tolerance: float = 0.05, samples: int = 20) -> CheckOutcome:
    """Compare the sum of open interest over the instruments present in both ``quoted`` (latest
    quotes) and ``rest`` (book summary). Passes when ``|quotes - rest| <= tolerance * rest``.
    Instruments present on one side only are counted and listed, not summed."""
    common = sorted(set(quoted) & set(rest))
    q = sum(quoted[n] for n in common)
    r = sum(rest[n] for n in common)
    rel = abs(q - r) / r if r else (0.0 if q == 0 else float("inf"))
    diffs = sorted(((n, quoted[n], rest[n]) for n in common if quoted[n] != rest[n]),
                   key=lambda x: -abs(x[1] - x[2]))
    return CheckOutcome(bool(common) and rel <= tolerance, {
        "instruments_compared": len(common),
        "quotes_sum": q,
        "rest_sum": r,
        "relative_difference": rel if rel != float("inf") else None,
        "tolerance": tolerance,
        "only_in_quotes": sorted(set(quoted) - set(rest))[:samples],
        "only_in_rest": len(set(rest) - set(quoted)),
        "largest_differences": [{"instrument_name": n, "quotes": a, "rest": b}
                                for n, a, b in diffs[:samples]],
    })


# --- candles ----------------------------------------------------------------------------------

def candles_match_trades(conn: psycopg.Connection, day: str | date, *, rel_tol: float = 1e-9,
                         samples: int = 10) -> CheckOutcome:
    """For every instrument traded that day (in every venue's trades table,
    :func:`~orchestration.lib.candles.trade_sources`) and every interval within the day (1m ..
    1d; the week's candle spans other days): candle trade counts sum to the trade count and candle
    volumes to the traded amount. Passes when all match."""
    start, end = day_window(day)
    trades = sql.SQL(" UNION ALL ").join(
        src.select("venue, instrument_name, count(*) AS n, sum(amount)::float8 AS vol")
        + sql.SQL(" GROUP BY 1, 2") for src in trade_sources())
    rows = conn.execute(sql.SQL(
        """
        WITH t AS ({}), c AS (
            SELECT venue, instrument_name, interval, sum(trade_count) AS n, sum(volume) AS vol
            FROM candles WHERE bucket_start >= %(start)s AND bucket_start < %(end)s
              AND interval = ANY(%(intervals)s) GROUP BY 1, 2, 3
        ), i AS (SELECT unnest(%(intervals)s::text[]) AS interval)
        SELECT t.venue, t.instrument_name, i.interval, t.n, coalesce(c.n, 0), t.vol, coalesce(c.vol, 0)
        FROM t CROSS JOIN i LEFT JOIN c
          ON c.venue = t.venue AND c.instrument_name = t.instrument_name AND c.interval = i.interval
        UNION ALL
        SELECT c.venue, c.instrument_name, c.interval, 0, c.n, 0, c.vol FROM c
        WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.venue = c.venue AND t.instrument_name = c.instrument_name)
        """).format(trades), {"start": start, "end": end, "intervals": list(DAY_INTERVALS)}).fetchall()
    bad = [r for r in rows if r[3] != r[4] or abs(r[5] - r[6]) > rel_tol * max(abs(r[5]), 1e-12)]
    return CheckOutcome(not bad, {
        "instruments": len({(r[0], r[1]) for r in rows}),
        "mismatches": len(bad),
        "samples": _rows(bad[:samples], ["venue", "instrument_name", "interval", "trades",
                                         "candle_trades", "volume", "candle_volume"]),
    })


#: ``exchange_candles.interval_minutes`` -> our candle interval of the same buckets.
EXCHANGE_INTERVALS: dict[int, str] = {1: "1m", 5: "5m", 15: "15m", 30: "30m", 60: "1h",
                                      240: "4h", 720: "12h", 1440: "1d", 10080: "1w"}


def exchange_candles_agree(conn: psycopg.Connection, day: str | date, *, rel_tol: float = 1e-9,
                           samples: int = 10) -> CheckOutcome:
    """The exchange's own candles (``exchange_candles``, closed ones) against the candles we
    computed from trades (``candles``), for every bucket starting that day where both exist:
    open, high, low, close and trade count equal, volume within ``rel_tol`` (relative).

    A bucket only one side has is not compared: exchanges publish only intervals with trades
    (Kraken's OHLCVT files), and our candles exist only for days whose trades we hold.
    Exchange intervals without an equal candle width (Kraken's 21600) are skipped, and so is a
    week the exchange starts on another weekday (the buckets do not meet). Passes when no
    compared bucket disagrees; ``metadata`` counts compared buckets per interval and shows a
    few disagreements with both sides' values.
    """
    start, end = day_window(day)
    minutes = list(EXCHANGE_INTERVALS)
    labels = [EXCHANGE_INTERVALS[m] for m in minutes]
    rows = conn.execute(
        """
        SELECT x.venue, x.instrument_name, c.interval, x.interval_begin,
               x.open, c.open, x.high, c.high, x.low, c.low, x.close, c.close,
               x.volume, c.volume, x.trade_count, c.trade_count
        FROM exchange_candles x
        JOIN unnest(%(minutes)s::int[], %(labels)s::text[]) AS m(minutes, label)
          ON m.minutes = x.interval_minutes
        JOIN candles c ON c.venue = x.venue AND c.instrument_name = x.instrument_name
          AND c.interval = m.label AND c.bucket_start = x.interval_begin
        WHERE x.closed AND x.interval_begin >= %(s)s AND x.interval_begin < %(e)s
        """, {"s": start, "e": end, "minutes": minutes, "labels": labels}).fetchall()
    names = ("open", "high", "low", "close", "volume", "trade_count")
    compared: dict[str, int] = {}
    bad = []
    for r in rows:
        compared[r[2]] = compared.get(r[2], 0) + 1
        diffs = []
        for i, name in enumerate(names):
            theirs, ours = r[4 + 2 * i], r[5 + 2 * i]
            if name == "volume":
                same = abs(theirs - ours) <= rel_tol * max(abs(theirs), abs(ours), 1e-12)
            else:
                same = theirs is None or theirs == ours   # a candle without a trade count
            if not same:
                diffs.append(name)
        if diffs:
            bad.append({"venue": r[0], "instrument_name": r[1], "interval": r[2],
                        "bucket_start": r[3].isoformat(), "differs": diffs,
                        **{f"{n}_exchange": r[4 + 2 * i] for i, n in enumerate(names)},
                        **{f"{n}_ours": r[5 + 2 * i] for i, n in enumerate(names)}})
    return CheckOutcome(not bad, {
        "compared": sum(compared.values()),
        "compared_per_interval": compared,
        "disagreements": len(bad),
        "samples": bad[:samples],
    })


# --- public trade coverage --------------------------------------------------------------------

def trade_coverage(conn: psycopg.Connection, venue: str, table: str, stream: str, day: str | date, *,
                   min_share: float = 0.99, samples: int = 20) -> CheckOutcome:
    """The share of the day's public trades of ``venue`` (in ``table``, a stream table with a
    ``source`` column) that the live stream delivered (``source='ws'``) rather than the REST
    backfill (``rest``) or an imported file (``csv``), overall and per instrument. Passes when
    the overall share is at least ``min_share``.

    The denominator is what is stored: trades lost in a window REST could not reach are in
    neither count, so the metadata also lists the day's ``stream`` gaps still ``open`` or
    ``unrecoverable`` in ``data_gaps`` (``complete`` is False while any exists): the share is
    then an upper bound, never a claim of completeness.
    """
    start, end = day_window(day)
    rows = conn.execute(
        f"SELECT instrument_name, count(*) FILTER (WHERE source = 'ws'), "
        f"count(*) FILTER (WHERE source = 'rest'), count(*) FILTER (WHERE source NOT IN ('ws', 'rest')) "
        f"FROM {table} WHERE venue = %s AND exchange_ts >= %s AND exchange_ts < %s "
        "GROUP BY 1 ORDER BY 1", (venue, start, end)).fetchall()
    unresolved = dict(conn.execute(
        "SELECT status, count(*) FROM data_gaps WHERE venue = %s AND stream = %s "
        "AND status IN ('open', 'unrecoverable') AND gap_start < %s AND gap_end > %s GROUP BY 1",
        (venue, stream, end, start)).fetchall())
    ws, rest, other = (sum(r[i] for r in rows) for i in (1, 2, 3))
    total = ws + rest + other
    share = ws / total if total else None
    per = sorted(((r[0], r[1] / (r[1] + r[2] + r[3])) for r in rows), key=lambda x: (x[1], x[0]))
    return CheckOutcome(share is not None and share >= min_share, {
        "trades": total,
        "from_stream": ws,
        "from_rest": rest,
        "from_files": other,
        "stream_share": round(share, 6) if share is not None else None,
        "min_share": min_share,
        "instruments": len(rows),
        "lowest_shares": {n: round(c, 6) for n, c in per[:samples]},
        "open_gaps": unresolved.get("open", 0),
        "unrecoverable_gaps": unresolved.get("unrecoverable", 0),
        "complete": not unresolved,
        **({} if total else {"note": "no trade stored for the day"}),
    })


# --- private data of trading accounts ---------------------------------------------------------

def executions_unique(conn: psycopg.Connection, tables: list[str], account_id: int, day: str | date, *,
                      samples: int = 10) -> CheckOutcome:
    """Fills of ``account_id`` on the UTC ``day`` stored twice under one ``(account_id, exec_id)``
    in any of ``tables`` (the venue's execution tables; an execution's time is part of the
    tables' key, so a fill re-sent with another time would be a second row). Passes when none."""
    start, end = day_window(day)
    dup: dict[str, int] = {}
    rows: list[dict] = []
    for t in tables:
        found = conn.execute(
            f"SELECT exec_id, count(*) FROM {t} WHERE account_id = %s AND exchange_ts >= %s "
            "AND exchange_ts < %s GROUP BY 1 HAVING count(*) > 1 ORDER BY 2 DESC, 1",
            (account_id, start, end)).fetchall()
        dup[t] = len(found)
        rows += [{"table": t, "exec_id": e, "copies": n} for e, n in found[:samples]]
    return CheckOutcome(not any(dup.values()), {"duplicates": dup, "samples": rows[:samples]})


def positions_wallet_fresh(conn: psycopg.Connection, tables: list[str], account_id: int,
                           day: str | date, *, now: datetime | None = None,
                           max_age_s: float = 86_400.0) -> CheckOutcome:
    """How old the newest position and wallet snapshot of ``account_id`` is at the reference
    time (now for the current day, the day's end for a past day), per table in ``tables`` (the
    venue's snapshot tables, e.g. ``bybit_positions``, ``bybit_wallet``). Snapshots come from the
    stream (quiet when nothing changes) and from REST at every reconciliation (collector start,
    reconnects, the asset on the current day). Passes when every table holds one at most
    ``max_age_s`` old; a table without any is stale.
    """
    now = now or days.utcnow()
    start, end = day_window(day)
    ref = min(now, end)
    if ref <= start:
        return CheckOutcome(True, {"evaluated": False, "note": "the day has not started"})
    per: dict[str, dict] = {}
    for t in tables:
        newest = conn.execute(f"SELECT max(exchange_ts) FROM {t} WHERE account_id = %s AND exchange_ts <= %s",
                              (account_id, ref)).fetchone()[0]
        age = (ref - newest).total_seconds() if newest is not None else None
        per[t] = {"newest": newest.isoformat() if newest else None,
                  "age_s": round(age, 3) if age is not None else None,
                  "fresh": age is not None and age <= max_age_s}
    return CheckOutcome(all(p["fresh"] for p in per.values()), {
        "reference_time": ref.isoformat(), "max_age_s": max_age_s, "tables": per,
        "stale": sorted(t for t, p in per.items() if not p["fresh"])})

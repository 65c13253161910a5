"""The daily gap audit: what the live capture of one venue missed on one UTC day.

:func:`audit_day` finds, for ``[day 00:00, min(day end, now))``:

* ``trade_seq`` holes per instrument: consecutive trades (by trade_seq) whose numbers skip.
  The hole belongs to the day of the trade *after* it; the trade before it may be up to
  ``SilenceRule.trade_lookback_s`` earlier. ``seq_from``/``seq_to`` are the missing numbers
  (inclusive); ``gap_start``/``gap_end`` the exchange times of the trades around the hole.
* disconnect windows from ``connection_events`` of the venue's public connections (an account's
  private connection, ``<venue>-private-<label>``, never makes a public gap: its windows are
  reported per account, :func:`private_windows`): a ``subscribed`` event with
  ``window_start``/``window_end`` (data lost by a reconnect), clipped to the day; and a
  ``disconnect`` not followed by any ``subscribed`` event before the end of the day (window from
  the disconnect to the end of the day, or to now for the current day). Instrument ``*``; the
  stream(s) follow the channels of the event (no channels: both streams).
* quote silences: an instrument with no quote for longer than ``max(floor_s, factor x its median
  inter-quote interval that day)``, between two quotes, and from its last quote to the end of the
  day (or its expiry, or the unsubscription of its ticker channel). A silence that began in the
  hour before the day starts at midnight when the previous day reported its part, else at the
  previous quote. A silence is not repeated per instrument when
  what remains of it outside the disconnect windows is below the threshold.
* instruments of the subscription set that day (``universe_versions``) that were alive that
  day but have no quote and no trade at all (stream ``quotes``).
* a day with no live capture at all (no quote, no ``ws`` trade, no connection event): one
  ``*`` gap per stream covering the day; the other rules are then moot.

:func:`write_findings` brings the day's *open* audit findings in ``data_gaps``
(``detected_by = 'audit'``, ``audit_day = day``) in line with the audit, matching findings to
rows by identity (:func:`finding_key`). A finding whose end is the end of the audited window
(a disconnect not resubscribed, a silence or a day without capture still going on) is the same
gap at every re-audit of the current day: its row keeps its ``gap_id`` and its end moves on.
What is already resolved (backfilled / unrecoverable) stays resolved and is not re-opened; when
such a gap has grown since, only the part after the resolved one is a new open row. Gaps
detected by the collector are never touched.

Which tables and columns are read comes from the venue registry: sequence holes in every
stream with ``Recovery.SEQUENCE`` (its ``sequence_column``), silences in every
``per_instrument`` stream, channels mapped to streams by the venue's ``channel_streams``.
How a gap is recovered (or why it cannot be) is the venue's ``plan_recovery``
(:func:`summarize_open`).

All functions take a psycopg (v3) connection; times are aware UTC datetimes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import asyncpg
import psycopg

from collector_daemon.core import days
from collector_daemon.core.accounts import account_of_connection, private_connection_prefix
from collector_daemon.core.days import day_window, from_us, to_us
from collector_daemon.core.gaps import Gap, GapStatus, insert_gaps_sync
from collector_daemon.core.recovery import open_gaps
from collector_daemon.storage.writer import init_connection
from collector_daemon.venues import Recovery, StreamSpec, get_venue


def _specs(venue: str) -> tuple[StreamSpec, ...]:
    return get_venue(venue).stream_specs()


def _sequenced(venue: str) -> list[StreamSpec]:
    return [s for s in _specs(venue) if s.recovery is Recovery.SEQUENCE]


def _per_instrument(venue: str) -> list[StreamSpec]:
    return [s for s in _specs(venue) if s.per_instrument]


@dataclass(frozen=True)
class SilenceRule:
    """Thresholds of the audit.

    Attributes:
        factor: a silence is a gap when longer than ``factor`` x the instrument's median
            inter-quote interval of the day ...
        floor_s: ... and longer than ``floor_s`` seconds.
        quote_lookback_s: how far before the day start the previous quote is looked up (s).
        trade_lookback_s: how far before the day start the previous trade of an instrument is
            looked up for a hole spanning midnight (s).
    """

    factor: float = 10.0
    floor_s: float = 60.0
    quote_lookback_s: float = 3600.0
    trade_lookback_s: float = 7 * 86400.0


def audit_kind(reason: str) -> str:
    """The kind of an audit finding, from its reason's prefix: ``"quote_silence: ..."`` ->
    ``quote_silence``; a sequence hole's ``"trade_seq hole: ..."`` -> ``trade_seq`` (the sequence
    column). Kinds: the sequence column, ``disconnect``, ``unresolved_disconnect``,
    ``quote_silence``, ``no_rows``, ``no_capture``."""
    return reason.split(":", 1)[0].removesuffix(" hole")


def _finding(venue: str, stream: str, instrument_name: str, gap_start: datetime, gap_end: datetime,
             seq_from: int | None, seq_to: int | None, reason: str) -> Gap:
    """An audit finding: an open :class:`~collector_daemon.core.gaps.Gap` (``detected_by =
    'audit'``) whose reason starts with its kind (:func:`audit_kind`); times aware UTC."""
    return Gap(venue, stream, instrument_name, to_us(gap_start), to_us(gap_end), seq_from, seq_to,
               "audit", GapStatus.OPEN, reason)


#: Kinds whose window can end at the end of the audited window (the gap was still going on):
#: on the current day that end is "now", so it moves on at every re-audit. A finding of these
#: kinds is identified by its start (the disconnect, the last quote, the day or creation start).
OPEN_ENDED_KINDS = frozenset({"unresolved_disconnect", "quote_silence", "no_rows", "no_capture"})


def finding_key(gap: Gap) -> tuple:
    """Identity of a finding or of a ``data_gaps`` row across re-audits: ``(stream, instrument,
    kind, start, end, seq_from, seq_to)`` (µs) with ``end`` None for :data:`OPEN_ENDED_KINDS`."""
    kind = audit_kind(gap.reason)
    return (gap.stream, gap.instrument_name, kind, gap.gap_start,
            None if kind in OPEN_ENDED_KINDS else gap.gap_end, gap.seq_from, gap.seq_to)


@dataclass(frozen=True)
class AuditReport:
    """Findings of one venue and day, plus what the audit looked at.

    Attributes:
        window_end: end of the audited window (day end, or now for the current day).
        expected_basis: where the expected instrument set came from (``universe_versions`` or
            ``unknown``: the no-rows rule was skipped).
        instruments_quoted, trades_seen, quotes_seen: coverage of the day's data.
    """

    venue: str
    day: date
    window_start: datetime
    window_end: datetime
    findings: list[Gap]
    expected_basis: str
    instruments_quoted: int
    quotes_seen: int
    trades_seen: int

    #: Per account label: what its private connection lost (:func:`private_windows`).
    accounts: dict[str, dict] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Findings per kind."""
        return dict(Counter(audit_kind(f.reason) for f in self.findings))

    def by_stream(self) -> dict[str, dict[str, int]]:
        """Findings per stream, then per kind: ``{"trades": {"disconnect": 2}, ...}``."""
        out: dict[str, Counter] = {}
        for f in self.findings:
            out.setdefault(f.stream, Counter())[audit_kind(f.reason)] += 1
        return {stream: dict(c) for stream, c in sorted(out.items())}


def expected_instruments(conn: psycopg.Connection, venue: str, start: datetime,
                         end: datetime, *, all_day: bool = False) -> set[str] | None:
    """Instruments the subscription set held during ``[start, end)``, from ``universe_versions``:
    the versions in force then (the last one written at or before ``start`` and every one written
    before ``end``), across currencies. ``all_day=False``: names in any of them (union);
    ``all_day=True``: names in all of them (intersection = subscribed the whole window).
    None when no version was in force (no subscription history)."""
    rows = conn.execute(
        """
        WITH v AS (
            SELECT currency, created_at, subscribed,
                   row_number() OVER (PARTITION BY currency ORDER BY created_at DESC, version DESC) AS rn
            FROM universe_versions WHERE venue = %(venue)s AND created_at <= %(start)s
        )
        SELECT currency, subscribed FROM v WHERE rn = 1
        UNION ALL
        SELECT currency, subscribed FROM universe_versions
        WHERE venue = %(venue)s AND created_at > %(start)s AND created_at < %(end)s
        """, {"venue": venue, "start": start, "end": end}).fetchall()
    if not rows:
        return None
    if not all_day:
        return {name for _, names in rows for name in names}
    by_currency: dict[str, set[str] | None] = {}
    for currency, names in rows:
        prev = by_currency.get(currency)
        by_currency[currency] = set(names) if prev is None else prev & set(names)
    has_start = {r[0] for r in conn.execute(
        "SELECT DISTINCT currency FROM universe_versions WHERE venue = %s AND created_at <= %s",
        (venue, start))}
    # A currency whose first version came after `start` had no set for part of the window.
    return {n for cur, names in by_currency.items() if cur in has_start for n in (names or ())}


def _trade_seq_holes(conn, venue, start, end, rule) -> list[Gap]:
    out = []
    for spec in _sequenced(venue):
        out += _sequence_holes(conn, venue, spec, start, end, rule)
    return out


def _sequence_holes(conn, venue, spec: StreamSpec, start, end, rule) -> list[Gap]:
    # table and column names come from the venue registry (code), never from input
    rows = conn.execute(
        """
        WITH day AS (
            SELECT instrument_name, trade_seq, exchange_ts,
                   lag(trade_seq) OVER w AS prev_seq, lag(exchange_ts) OVER w AS prev_ts,
                   row_number() OVER w AS rn
            FROM trades
            WHERE venue = %(venue)s AND trade_seq IS NOT NULL
              AND exchange_ts >= %(start)s AND exchange_ts < %(end)s
            WINDOW w AS (PARTITION BY instrument_name ORDER BY trade_seq)
        ), firsts AS (
            SELECT d.instrument_name, d.trade_seq, d.exchange_ts, p.trade_seq AS prev_seq,
                   p.exchange_ts AS prev_ts
            FROM day d CROSS JOIN LATERAL (
                SELECT t.trade_seq, t.exchange_ts FROM trades t
                WHERE t.venue = %(venue)s AND t.instrument_name = d.instrument_name
                  AND t.trade_seq < d.trade_seq
                  AND t.exchange_ts >= %(lookback)s AND t.exchange_ts < %(start)s
                ORDER BY t.trade_seq DESC LIMIT 1) p
            WHERE d.rn = 1
        )
        SELECT instrument_name, prev_seq + 1, trade_seq - 1, prev_ts, exchange_ts
        FROM day WHERE rn > 1 AND trade_seq > prev_seq + 1
        UNION ALL
        SELECT instrument_name, prev_seq + 1, trade_seq - 1, prev_ts, exchange_ts
        FROM firsts WHERE trade_seq > prev_seq + 1
        ORDER BY 1, 2
        """.replace("trades", spec.table.name).replace("trade_seq", spec.sequence_column),
        {"venue": venue, "start": start, "end": end,
         "lookback": start - timedelta(seconds=rule.trade_lookback_s)}).fetchall()
    out = []
    for name, seq_from, seq_to, prev_ts, next_ts in rows:
        n = seq_to - seq_from + 1
        col = spec.sequence_column
        out.append(_finding(venue, spec.name, name, min(prev_ts, next_ts), max(prev_ts, next_ts),
                            seq_from, seq_to, f"{col} hole: {n} row(s) missing ({seq_from}..{seq_to})"))
    return out


def _streams_of(venue: str, channels: list[str] | None) -> list[str]:
    """The streams fed by ``channels`` (the venue's channel map); all of them when unknown."""
    v = get_venue(venue)
    every = sorted(s.name for s in v.stream_specs())
    streams = {s for ch in channels or () if (s := v.stream_of_channel(ch)) is not None}
    return sorted(streams) or every


def _disconnects(conn, venue, start, end) -> list[Gap]:
    out: list[Gap] = []
    windows = conn.execute(
        """
        SELECT connection_id, channels, greatest(window_start, %(start)s), least(window_end, %(end)s)
        FROM connection_events
        WHERE venue = %(venue)s AND event = 'subscribed'
          AND window_start IS NOT NULL AND window_end IS NOT NULL
          AND window_start < %(end)s AND window_end > %(start)s
          AND left(connection_id, length(%(private)s)) <> %(private)s
        ORDER BY window_start, connection_id
        """, {"venue": venue, "start": start, "end": end,
              "private": private_connection_prefix(venue)}).fetchall()
    for conn_id, channels, ws, we in windows:
        if we <= ws:
            continue
        for stream in _streams_of(venue, channels):
            out.append(_finding(venue, stream, "*", ws, we, None, None,
                                f"disconnect: window lost by the reconnect of connection {conn_id}"))
    unresolved = conn.execute(
        """
        SELECT d.connection_id, d.event_ts, d.reason
        FROM connection_events d
        WHERE d.venue = %(venue)s AND d.event = 'disconnect'
          AND d.event_ts >= %(start)s AND d.event_ts < %(end)s
          AND left(d.connection_id, length(%(private)s)) <> %(private)s
          AND NOT EXISTS (
              SELECT 1 FROM connection_events s
              WHERE s.venue = %(venue)s AND s.event = 'subscribed'
                AND left(s.connection_id, length(%(private)s)) <> %(private)s
                AND s.event_ts > d.event_ts AND s.event_ts < %(end)s)
          AND NOT EXISTS (
              SELECT 1 FROM connection_events s
              WHERE s.venue = %(venue)s AND s.event = 'subscribed'
                AND left(s.connection_id, length(%(private)s)) <> %(private)s
                AND s.window_start <= d.event_ts AND s.window_end >= d.event_ts)
        ORDER BY d.event_ts
        """, {"venue": venue, "start": start, "end": end,
              "private": private_connection_prefix(venue)}).fetchall()
    for conn_id, ts, reason in unresolved:
        if ts >= end:
            continue
        why = f" ({reason})" if reason else ""
        for stream in sorted(s.name for s in _specs(venue)):
            out.append(_finding(
                venue, stream, "*", ts, end, None, None,
                f"unresolved_disconnect: connection {conn_id} disconnected{why} and nothing was "
                f"resubscribed before the end of the audited window"))
    return out


def private_windows(conn: psycopg.Connection, venue: str, start: datetime,
                    end: datetime) -> dict[str, dict]:
    """What each account's private connection (``<venue>-private-<label>``) lost in ``[start,
    end)``, per account label: ``disconnects`` (disconnect events other than a shutdown),
    ``lost_windows`` and ``lost_s`` (windows between the last frame before a disconnect and the
    confirmed resubscription, clipped to the window, seconds), ``unresolved`` (disconnects not
    followed by a resubscription of the same connection before ``end``) and ``channels`` (the
    private topics its subscriptions carried, e.g. Bybit's ``execution``, ``wallet``). Empty for a venue without
    private connections. The audit reports them only: the collector itself writes each lost
    window to ``data_gaps`` per account and private stream and resolves it by the REST
    reconciliation after the reconnect (``collector_daemon.core.accounts.PrivateSession``), and
    the daily ``private_reconciliation`` asset redoes any day."""
    prefix = private_connection_prefix(venue)
    rows = conn.execute(
        """
        SELECT e.connection_id, e.event, e.event_ts, e.channels, e.reason,
               greatest(e.window_start, %(start)s), least(e.window_end, %(end)s),
               EXISTS (SELECT 1 FROM connection_events s
                       WHERE s.venue = e.venue AND s.connection_id = e.connection_id
                         AND s.event = 'subscribed' AND s.event_ts > e.event_ts
                         AND s.event_ts < %(end)s)
        FROM connection_events e
        WHERE e.venue = %(venue)s AND left(e.connection_id, length(%(p)s)) = %(p)s
          AND ((e.event = 'disconnect' AND e.event_ts >= %(start)s AND e.event_ts < %(end)s)
               OR (e.event = 'subscribed' AND ((e.event_ts >= %(start)s AND e.event_ts < %(end)s)
                   OR (e.window_start < %(end)s AND e.window_end > %(start)s))))
        ORDER BY e.event_ts, e.event_id
        """, {"venue": venue, "start": start, "end": end, "p": prefix}).fetchall()
    out: dict[str, dict] = {}
    for conn_id, event, _ts, channels, reason, ws, we, resubscribed in rows:
        label = account_of_connection(venue, conn_id)
        acc = out.setdefault(label, {"connection_id": conn_id, "disconnects": 0, "lost_windows": 0,
                                     "lost_s": 0.0, "unresolved": 0, "channels": []})
        if event == "disconnect":
            if reason != "shutdown":
                acc["disconnects"] += 1
                acc["unresolved"] += 0 if resubscribed else 1
            continue
        for ch in channels or ():
            if ch not in acc["channels"]:
                acc["channels"].append(ch)
        if ws is not None and we is not None and we > ws:
            acc["lost_windows"] += 1
            acc["lost_s"] = round(acc["lost_s"] + (we - ws).total_seconds(), 3)
    for acc in out.values():
        acc["channels"].sort()
    return out


def _quote_silences(conn, venue, spec: StreamSpec, start, end, rule,
                    star_windows) -> tuple[list[Gap], int, int]:
    params = {"venue": venue, "start": start, "end": end, "floor": rule.floor_s,
              "lookback": start - timedelta(seconds=rule.quote_lookback_s)}
    # One pass over the day's quotes: per instrument its edges, median interval and the
    # intervals longer than the floor (no threshold can be lower than the floor).
    stats = conn.execute(
        """
        WITH q AS (
            SELECT instrument_name, exchange_ts,
                   lag(exchange_ts) OVER (PARTITION BY instrument_name ORDER BY exchange_ts) AS prev_ts
            FROM {table}
            WHERE venue = %(venue)s AND exchange_ts >= %(lookback)s AND exchange_ts < %(end)s
        ), d AS (
            SELECT instrument_name, exchange_ts, prev_ts,
                   extract(epoch FROM exchange_ts - prev_ts)::float8 AS dt_s
            FROM q WHERE exchange_ts >= %(start)s
        )
        SELECT d.instrument_name, min(d.exchange_ts), max(d.exchange_ts), count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY d.dt_s),
               min(i.expiration_timestamp),
               array_agg(d.prev_ts ORDER BY d.exchange_ts) FILTER (WHERE d.dt_s > %(floor)s),
               array_agg(d.exchange_ts ORDER BY d.exchange_ts) FILTER (WHERE d.dt_s > %(floor)s)
        FROM d LEFT JOIN instruments i ON i.venue = %(venue)s AND i.instrument_name = d.instrument_name
        GROUP BY d.instrument_name
        ORDER BY 1
        """.replace("{table}", spec.table.name), params).fetchall()
    long_ivs = [(r[0], p, t) for r in stats if r[6] for p, t in zip(r[6], r[7])]
    unsubscribed: dict[str, list[datetime]] = {}
    for ts, channels in conn.execute(
            "SELECT event_ts, channels FROM connection_events WHERE venue = %s "
            "AND event = 'unsubscribed' AND event_ts >= %s AND event_ts < %s ORDER BY event_ts",
            (venue, start, end)):
        for ch in channels or ():
            name = get_venue(venue).channel_instrument(ch)
            if name:
                unsubscribed.setdefault(name, []).append(ts)

    def threshold(median_s: float | None) -> float:
        return max(rule.floor_s, rule.factor * (median_s or 0.0))

    def uncovered_s(ws: datetime, we: datetime) -> float:
        """Seconds of [ws, we] outside every disconnect window of the stream."""
        total, cursor = 0.0, ws
        for s, e in sorted(star_windows):
            if e <= cursor or s >= we:
                continue
            if s > cursor:
                total += (s - cursor).total_seconds()
            cursor = max(cursor, e)
        if we > cursor:
            total += (we - cursor).total_seconds()
        return total

    info = {r[0]: r for r in stats}
    out: list[Gap] = []
    for name, prev_ts, ts in long_ivs:
        median_s = info[name][4] if name in info else None
        limit = threshold(median_s)
        if (ts - prev_ts).total_seconds() <= limit:
            continue
        if uncovered_s(prev_ts, ts) <= limit:
            continue
        # Straddling midnight: the previous day reported its part when that part alone was
        # over its threshold; otherwise this day reports the whole silence.
        ws = start if prev_ts < start and (start - prev_ts).total_seconds() > limit else prev_ts
        out.append(_finding(venue, spec.name, name, ws, ts, None, None,
                            _silence_reason(ws, ts, median_s, limit)))
    for name, _first, last_ts, _n, median_s, expiry, _p, _t in stats:
        stop = end
        if expiry is not None:
            stop = min(stop, expiry)
        later = [t for t in unsubscribed.get(name, ()) if t >= last_ts]
        if later:
            stop = min(stop, later[0])
        limit = threshold(median_s)
        if (stop - last_ts).total_seconds() > limit and uncovered_s(last_ts, stop) > limit:
            out.append(_finding(venue, spec.name, name, last_ts, stop, None, None,
                                _silence_reason(last_ts, stop, median_s, limit)))
    quotes_seen = sum(r[3] for r in stats)
    return out, len(stats), quotes_seen


def _silence_reason(ws: datetime, we: datetime, median_s: float | None, limit: float) -> str:
    cadence = "unknown" if median_s is None else f"{median_s:.3g} s"
    return (f"quote_silence: no quote for {(we - ws).total_seconds():.0f} s "
            f"(usual cadence {cadence}, threshold {limit:.0f} s)")


def _no_rows(conn, venue, start, end, expected: set[str]) -> list[Gap]:
    if not expected:
        return []
    rows = conn.execute(
        """
        WITH e AS (SELECT unnest(%(names)s::text[]) AS instrument_name)
        SELECT e.instrument_name,
               greatest(%(start)s, coalesce(i.creation_timestamp, %(start)s)),
               least(%(end)s, coalesce(i.expiration_timestamp, %(end)s))
        FROM e LEFT JOIN instruments i
          ON i.venue = %(venue)s AND i.instrument_name = e.instrument_name
        WHERE coalesce(i.creation_timestamp, %(start)s) < %(end)s
          AND coalesce(i.expiration_timestamp, %(end)s) > %(start)s
          {absent}
        ORDER BY 1
        """.replace("{absent}", " ".join(
            f"AND NOT EXISTS (SELECT 1 FROM {t} x WHERE x.venue = %(venue)s "
            "AND x.instrument_name = e.instrument_name "
            "AND x.exchange_ts >= %(start)s AND x.exchange_ts < %(end)s)"
            for t in dict.fromkeys(spec.table.name for spec in _specs(venue)))),
        {"venue": venue, "start": start, "end": end, "names": sorted(expected)}).fetchall()
    stream = (_per_instrument(venue) or list(_specs(venue)))[0].name
    return [_finding(venue, stream, name, ws, we, None, None,
                       "no_rows: instrument of the subscription set has no quote and no trade")
            for name, ws, we in rows if we > ws]


def audit_day(conn: psycopg.Connection, venue: str, day: str | date, *,
              now: datetime | None = None, rule: SilenceRule = SilenceRule()) -> AuditReport:
    """Find the gaps of ``venue`` on the UTC ``day`` (see the module docstring).

    ``now`` (default: the wall clock) caps the window for the current day; a day that has not
    started yet yields no findings. Read-only.
    """
    start, day_end = day_window(day)
    now = now or days.utcnow()
    end = min(day_end, now)
    d = start.date()
    if end <= start:
        return AuditReport(venue, d, start, end, [], "unknown", 0, 0, 0)
    window = {"v": venue, "s": start, "e": end}
    live = False     # a row captured live (a stream row, a 'ws' row where REST also writes)
    trades_n = 0     # rows of the streams recovered by sequence (trades)
    for spec in _specs(venue):
        table, ws_only = spec.table.name, "source" in spec.table.columns
        live = live or conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE venue = %(v)s AND exchange_ts >= %(s)s "
            f"AND exchange_ts < %(e)s{' AND source = ' + chr(39) + 'ws' + chr(39) if ws_only else ''})",
            window).fetchone()[0]
        if spec.recovery is Recovery.SEQUENCE:
            trades_n += conn.execute(
                f"SELECT count(*) FROM {table} WHERE venue = %(v)s AND exchange_ts >= %(s)s "
                "AND exchange_ts < %(e)s", window).fetchone()[0]
    events = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM connection_events WHERE venue = %(v)s "
        "AND event_ts >= %(s)s AND event_ts < %(e)s)", window).fetchone()[0]
    expected = expected_instruments(conn, venue, start, end)
    basis = "universe_versions" if expected is not None else "unknown"
    if not live and not events:
        findings = [_finding(venue, s, "*", start, end, None, None,
                               "no_capture: no quote, no live trade and no connection event")
                    for s in sorted((spec.name for spec in _specs(venue)), reverse=True)]
        findings += _trade_seq_holes(conn, venue, start, end, rule)  # REST-filled days too
        return AuditReport(venue, d, start, end, findings, basis, 0, 0, trades_n,
                           private_windows(conn, venue, start, end))
    findings = _trade_seq_holes(conn, venue, start, end, rule)
    findings += _disconnects(conn, venue, start, end)
    quoted = quotes_seen = 0
    for spec in _per_instrument(venue):
        star = [(from_us(f.gap_start), from_us(f.gap_end)) for f in findings
                if f.stream == spec.name and f.instrument_name == "*"]
        silences, n_quoted, n_seen = _quote_silences(conn, venue, spec, start, end, rule, star)
        findings += silences
        quoted, quotes_seen = quoted + n_quoted, quotes_seen + n_seen
    if expected is not None:
        findings += _no_rows(conn, venue, start, end, expected)
    return AuditReport(venue, d, start, end, findings, basis, quoted, quotes_seen, trades_n,
                       private_windows(conn, venue, start, end))


@dataclass(frozen=True)
class WriteResult:
    """What :func:`write_findings` changed, in findings (rows for ``deleted``).

    Attributes:
        inserted: new open rows (new gaps, or the grown part of a resolved one).
        updated: open rows kept (same ``gap_id``) whose end or reason moved.
        unchanged: open rows kept as they were.
        deleted: open rows the audit no longer finds.
        already_resolved: findings wholly covered by backfilled / unrecoverable rows.
    """

    inserted: int
    updated: int
    unchanged: int
    deleted: int
    already_resolved: int


def _unresolved_part(f: Gap, resolved: dict[tuple, int]) -> Gap | None:
    """``f`` minus what resolved rows of the day already cover (``resolved``: identity -> latest
    end): None when covered; for an open-ended kind that grew past its resolved part(s), the
    rest, starting where they end (each such continuation is itself a row, so follow the chain)."""
    if audit_kind(f.reason) not in OPEN_ENDED_KINDS:
        return None if finding_key(f) in resolved else f
    start = f.gap_start
    while (done := resolved.get(finding_key(replace(f, gap_start=start)))) is not None and done > start:
        start = done
    if start >= f.gap_end:
        return None
    if start == f.gap_start:
        return f
    return replace(f, gap_start=start, reason=f"{f.reason}; the part before {from_us(start).isoformat()} "
                                              "is already resolved")


def write_findings(conn: psycopg.Connection, report: AuditReport) -> WriteResult:
    """Bring the open audit findings of ``report.venue``/``report.day`` in ``data_gaps`` in line
    with ``report`` (one transaction; concurrent audits of the same day are serialised by an
    advisory lock). Each finding is matched to the day's audit rows by :func:`finding_key`:

    * an open row with the same identity is kept (``gap_id``, ``detected_at``), its ``gap_end``
      and ``reason`` updated when they moved;
    * a finding covered by resolved rows is skipped; an open-ended one that outgrew them
      continues as an open row from the end of the last resolved part (:func:`_unresolved_part`);
    * otherwise it is inserted.

    Open rows no finding matched are deleted. Two findings with one identity (two connections
    that dropped at the same instant) are one gap.
    """
    venue, day = report.venue, report.day
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('tickvault_audit:' || %s || ':' || %s))",
                     (venue, day.isoformat()))
        open_rows: dict[tuple, tuple[int, int, str]] = {}
        stale: list[int] = []
        resolved: dict[tuple, int] = {}
        for gap_id, stream, name, gs, ge, sf, st, status, reason in conn.execute(
                "SELECT gap_id, stream, instrument_name, gap_start, gap_end, seq_from, seq_to, "
                "status, coalesce(reason, '') FROM data_gaps WHERE venue = %s "
                "AND detected_by = 'audit' AND audit_day = %s ORDER BY gap_id", (venue, day)):
            ge = to_us(ge)
            key = finding_key(Gap(venue, stream, name, to_us(gs), ge, sf, st, "audit",
                                  GapStatus(status), reason))
            if status != "open":
                resolved[key] = max(ge, resolved.get(key, ge))
            elif key in open_rows:
                stale.append(gap_id)
            else:
                open_rows[key] = (gap_id, ge, reason)
        inserts: list[Gap] = []
        updates: list[tuple] = []
        unchanged = already = 0
        seen: set[tuple] = set()
        for finding in report.findings:
            f = _unresolved_part(finding, resolved)
            if f is None:
                already += 1
                continue
            key = finding_key(f)
            if key in seen:
                continue
            seen.add(key)
            row = open_rows.pop(key, None)
            if row is None:
                inserts.append(f)
            elif (row[1], row[2]) != (f.gap_end, f.reason):
                updates.append((from_us(f.gap_end), f.reason, row[0]))
            else:
                unchanged += 1
        stale += [row[0] for row in open_rows.values()]
        # status = 'open' again: a backfill may have resolved a row since it was read (the
        # backfill does not take the audit's lock); it then stays as the backfill left it.
        with conn.cursor() as cur:
            if stale:
                cur.execute("DELETE FROM data_gaps WHERE gap_id = ANY(%s) AND status = 'open'",
                            (stale,))
            if updates:
                cur.executemany("UPDATE data_gaps SET gap_end = %s, reason = %s "
                                "WHERE gap_id = %s AND status = 'open'", updates)
            if inserts:
                insert_gaps_sync(conn, [replace(f, audit_day=day) for f in inserts])
    return WriteResult(len(inserts), len(updates), unchanged, len(stale), already)


# --- recoverability ---------------------------------------------------------------------------

@dataclass
class RecoverableSummary:
    """Open gaps of a day split by recoverability (for metadata and the backfill sensor)."""

    recoverable: list[Gap] = field(default_factory=list)
    unrecoverable: list[Gap] = field(default_factory=list)


def summarize_open(dsn: str, venue: str, day: str | date, *, now: datetime,
                   history_available: bool) -> RecoverableSummary:
    """Split the open gaps of the day (``collector_daemon.core.recovery.open_gaps``) by the
    venue's ``plan_recovery`` at ``now``.

    Raises:
        asyncpg errors: the database is unreachable.
    """
    v = get_venue(venue)
    specs = {s.name: s for s in v.stream_specs()}

    async def load() -> list[Gap]:
        conn = await asyncpg.connect(dsn)
        try:
            await init_connection(conn)
            return await open_gaps(conn, venue, day)
        finally:
            await conn.close()

    out = RecoverableSummary()
    for g in asyncio.run(load()):
        spec = specs.get(g.stream)
        plan = spec is not None and v.plan_recovery(g, spec, now_us=to_us(now),
                                                    history_available=history_available).recoverable
        (out.recoverable if plan else out.unrecoverable).append(g)
    return out


def gaps_key(gap_ids: list[int]) -> str:
    """A short stable name for a set of ``data_gaps`` rows (sha1 of the sorted ids, 16 hex
    digits; ``""`` for none). Re-audits keep a gap's row, so the same open gaps give the same
    key and the backfill sensor requests them once."""
    if not gap_ids:
        return ""
    return hashlib.sha1(",".join(map(str, sorted(gap_ids))).encode()).hexdigest()[:16]

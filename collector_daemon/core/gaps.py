"""The gap model: one type for a window of data we could not capture, and the one way it is
written to ``data_gaps``.

A :class:`Gap` is found by the collector (a sequence jump, a disconnect window, a batch the full
spool dropped) or by the daily audit (``orchestration``), recovered by
:mod:`collector_daemon.core.recovery`, and resolved to ``backfilled`` or ``unrecoverable``.
Every insert goes through :data:`INSERT_SQL` with :meth:`Gap.values` (asyncpg:
:func:`insert_gap`; psycopg, the audit's transaction: :func:`insert_gaps_sync`); a gap spooled
while the database is down is :meth:`Gap.row` in ``rows.DATA_GAPS`` order.

Times are integers in **µs since the Unix epoch (UTC)**; ``instrument_name`` ``*`` means every
instrument of the stream; ``seq_from``/``seq_to`` are the missing sequence numbers, inclusive.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import date

import asyncpg

from collector_daemon.core.days import from_us
from collector_daemon.rows import DATA_GAPS


class GapStatus(str, enum.Enum):
    """Where a gap stands: ``open`` (recoverable, not yet recovered), ``backfilled`` (fetched
    again over REST), ``unrecoverable`` (the venue cannot serve it; the reason says why)."""

    OPEN = "open"
    BACKFILLED = "backfilled"
    UNRECOVERABLE = "unrecoverable"


@dataclass(frozen=True, slots=True)
class Gap:
    """One ``data_gaps`` row.

    Attributes:
        venue, stream: the venue and its stream (``StreamSpec.name``).
        instrument_name: the instrument, or ``*`` for every instrument of the stream.
        gap_start, gap_end: exchange-time window, µs since the epoch (UTC).
        seq_from, seq_to: missing sequence numbers, inclusive (sequence gaps only).
        detected_by: the rule that found it (``trade_seq``, ``disconnect``, ``spool_full``,
            ``audit``).
        status: :class:`GapStatus`.
        reason: human-readable; the audit's start with the finding's kind.
        gap_id: the row's id once stored.
        audit_day: the UTC day an audit finding belongs to (None for the collector's).
        account_id: the account of a private stream's gap (``stream`` one of the venue's
            ``private_streams``); None for public streams.
    """

    venue: str
    stream: str
    instrument_name: str
    gap_start: int
    gap_end: int
    seq_from: int | None
    seq_to: int | None
    detected_by: str
    status: GapStatus
    reason: str
    gap_id: int | None = None
    audit_day: date | None = None
    account_id: int | None = None

    def values(self) -> tuple:
        """The values of :data:`INSERT_SQL`, in order."""
        return (self.venue, self.stream, self.instrument_name, self.gap_start, self.gap_end,
                self.seq_from, self.seq_to, self.detected_by, self.status.value, self.reason,
                self.audit_day, self.account_id)

    def row(self) -> tuple:
        """The row in ``rows.DATA_GAPS`` column order (spool records)."""
        return self.values()[:len(DATA_GAPS.columns)]

    def stored(self, gap_id: int) -> "Gap":
        """This gap with its row id."""
        return replace(self, gap_id=gap_id)

    def describe(self) -> str:
        """One line for logs: ``trades BTC-... 1617...000..1617...500 seq 5..9 (trade_seq)``."""
        seq = f" seq {self.seq_from}..{self.seq_to}" if self.seq_from is not None else ""
        return (f"{self.venue} {self.stream} {self.instrument_name} {self.gap_start}..{self.gap_end}"
                f"{seq} ({self.detected_by}, {self.status.value})")


#: The one insert of a gap (``resolved_at`` is set unless the gap is open). Placeholders are
#: asyncpg's; :func:`insert_gaps_sync` runs the same statement through psycopg.
INSERT_SQL = (
    "INSERT INTO data_gaps (venue, stream, instrument_name, gap_start, gap_end, seq_from, seq_to, "
    "detected_by, status, reason, audit_day, account_id, resolved_at) VALUES ($1, $2, $3, $4, $5, $6, "
    "$7, $8, $9, $10, $11, $12, CASE WHEN $9 = 'open' THEN NULL ELSE now() END) RETURNING gap_id")

_PSYCOPG_SQL = INSERT_SQL
for _i in range(12, 0, -1):
    _PSYCOPG_SQL = _PSYCOPG_SQL.replace(f"${_i}", f"%(p{_i})s")


def validate(gap: Gap) -> Gap:
    """``gap`` if its stream is one of its venue's (the registry; a gap with an ``account_id``:
    one of the venue's ``private_streams``); ``data_gaps.stream`` is free text in the schema, so
    this is where a wrong name is caught.

    Raises:
        ValueError: unknown venue or stream (the message lists the venue's streams).
    """
    from collector_daemon.venues import get_venue
    venue = get_venue(gap.venue)
    if gap.account_id is not None:
        streams, kind = list(venue.private_streams), "private streams"
    else:
        streams, kind = [s.name for s in venue.stream_specs()], "streams"
    if gap.stream not in streams:
        raise ValueError(f"gap of venue {gap.venue!r}: unknown stream {gap.stream!r} "
                         f"(the venue's {kind}: {', '.join(streams) or 'none'})")
    return gap


async def insert_gap(conn: asyncpg.Connection, gap: Gap) -> int:
    """Insert ``gap``; returns its ``gap_id``. ``conn`` must encode timestamps as µs integers
    (``collector_daemon.storage.writer.init_connection``).

    Raises:
        ValueError: the stream is not one of the venue's (:func:`validate`).
        asyncpg.PostgresError: the database refused it (e.g. ``is_bad_data``) or failed.
    """
    return await conn.fetchval(INSERT_SQL, *validate(gap).values())


def insert_gaps_sync(conn, gaps: list[Gap]) -> None:
    """Insert ``gaps`` through a psycopg (v3) connection, in the caller's transaction (the µs
    times become exact aware datetimes).

    Raises:
        ValueError: a stream is not one of its venue's (:func:`validate`).
        psycopg.Error: the database refused them.
    """
    params = []
    for g in map(validate, gaps):
        values = list(g.values())
        values[3], values[4] = from_us(g.gap_start), from_us(g.gap_end)
        params.append({f"p{i + 1}": v for i, v in enumerate(values)})
    with conn.cursor() as cur:
        cur.executemany(_PSYCOPG_SQL.removesuffix(" RETURNING gap_id"), params)

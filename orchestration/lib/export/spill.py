"""Spill and sort: a day's rows are streamed from one database snapshot, routed to one Arrow IPC
spill file per *range* (consecutive instruments holding at most ``chunk_rows`` rows, or a time
slice of one busy instrument), and each range is read back and sorted in memory by the table's
sort key. Memory is bounded by ``chunk_rows``, not by the size of the day.

The day is read in *passes* (:func:`plan_passes`): consecutive ranges holding about
``1/passes`` of the day each, one ``SELECT`` per pass filtered on (venue, instrument_name), all
in the same REPEATABLE READ snapshot. :class:`DaySpill` runs the passes on a thread of its own
and says when each range's spill file is complete, so the ranges of a finished pass are sorted
and encoded while the next pass is read."""

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from orchestration.lib.export.layout import (
    TableLayout,
    Unit,
    day_filter,
    quote_ident,
    start_of_day_us,
    unit_order,
)

#: One day in µs.
DAY_US = 86_400_000_000


@dataclass
class Range:
    """Rows of one partition unit (venue, account_id; account_id None for a public table) sorted
    together in memory: consecutive instruments (byte order) or, when ``sliced``, one time slice
    of a single busy instrument. ``rows`` is the expected count (from the snapshot's counts;
    approximate for slices), ``path`` its spill file (None while no row went to it)."""

    unit: Unit
    names: list[str | None] = field(default_factory=list)
    rows: int = 0
    sliced: bool = False
    path: Path | None = None


def _name_order(name: str | None) -> tuple[bool, str]:
    """Sort key of instrument names: byte order of UTF-8 (= code point order), NULL last."""
    return name is None, name or ""


def _plan(counts: list[tuple[Unit, str | None, int]], chunk_rows: int, sliceable: bool):
    """Ranges over the day's (unit, instrument, rows) counts, and the routing arrays. An
    instrument with more than ``chunk_rows`` rows is cut into time slices when ``sliceable``
    (:attr:`TableLayout.time_sliceable`), else it gets a range of its own.

    Returns (ranges, venues, accounts, names, base, slices): a row whose venue, account and
    instrument have the ordinals v, a, g in ``venues`` / ``accounts`` / ``names`` goes to range
    ``base[c] + min(slices[c] - 1, offset_us * slices[c] // DAY_US)`` with
    ``c = (v * len(accounts) + a) * len(names) + g`` and ``offset_us`` its time since the start
    of the day (``accounts`` is ``[None]`` for a public table: a = 0).
    """
    venues = sorted({u[0] for u, _, _ in counts})
    accounts = sorted({u[1] for u, _, _ in counts}, key=lambda a: -1 if a is None else a)
    names = sorted({g for _, g, _ in counts}, key=_name_order)
    vi = {v: i for i, v in enumerate(venues)}
    ai = {a: i for i, a in enumerate(accounts)}
    gi = {g: i for i, g in enumerate(names)}
    base = [0] * (len(venues) * len(accounts) * len(names))
    slices = [1] * len(base)
    ranges: list[Range] = []
    for unit, group, n in sorted(counts, key=lambda c: (unit_order(c[0]), _name_order(c[1]))):
        cell = (vi[unit[0]] * len(accounts) + ai[unit[1]]) * len(names) + gi[group]
        if n > chunk_rows and sliceable:
            k = -(-n // chunk_rows)
            base[cell], slices[cell] = len(ranges), k
            ranges.extend(Range(unit, [group], n // k, sliced=True) for _ in range(k))
            continue
        last = ranges[-1] if ranges else None
        if last is None or last.sliced or last.unit != unit or last.rows + n > chunk_rows:
            ranges.append(Range(unit))
        ranges[-1].names.append(group)
        ranges[-1].rows += n
        base[cell] = len(ranges) - 1
    return ranges, venues, accounts, names, base, slices


def plan_passes(ranges: list[Range], passes: int) -> list[range]:
    """Consecutive range indices cut into at most ``passes`` groups of about equal rows. The
    time slices of one instrument stay in one pass (a pass selects whole instruments)."""
    total = sum(r.rows for r in ranges)
    target = max(1, -(-total // max(1, passes)))
    cuts, acc = [0], 0
    for i, rng in enumerate(ranges):
        acc += rng.rows
        following = ranges[i + 1] if i + 1 < len(ranges) else None
        same_instrument = (following is not None and rng.sliced and following.sliced
                           and (following.unit, following.names) == (rng.unit, rng.names))
        if following is not None and acc >= target and not same_instrument:
            cuts.append(i + 1)
            acc = 0
    cuts.append(len(ranges))
    return [range(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _literal(text: str) -> str:
    """``text`` as an SQL string literal (standard_conforming_strings, the default since 9.1)."""
    return "'" + text.replace("'", "''") + "'"


def pass_filter(layout: TableLayout, ranges: list[Range]) -> str:
    """SQL condition selecting the rows of ``ranges`` (consecutive, whole instruments): per
    unit (venue and account), instrument_name between the first and last name in byte order
    (``COLLATE "C"``, the order of :func:`_name_order`; a NULL name sorts last)."""
    g = quote_ident(layout.group_column)
    bounds: dict[Unit, list[str | None]] = {}
    for rng in ranges:
        for name in rng.names:
            bounds.setdefault(rng.unit, [name, name])[1] = name
    parts = []
    for (venue, account), (lo, hi) in bounds.items():
        cond = [f"venue = {_literal(venue)}"]
        if account is not None:
            cond.append(f"{quote_ident(layout.account_column)} = {int(account)}")
        if lo is None:
            cond.append(f"{g} IS NULL")
        elif hi is None:
            cond.append(f'({g} COLLATE "C" >= {_literal(lo)} OR {g} IS NULL)')
        else:
            cond.append(f'{g} COLLATE "C" BETWEEN {_literal(lo)} AND {_literal(hi)}')
        parts.append("(" + " AND ".join(cond) + ")")
    return " OR ".join(parts)


class DaySpill:
    """Count and stream one (table, day) in one snapshot, routing rows into per-range spill
    files; the streaming runs on a thread of its own (:meth:`start`).

    Usage: construct with an open ADBC connection (``adbc_driver_postgresql.dbapi``); this
    starts the REPEATABLE READ snapshot and counts the day's rows per (venue, account,
    instrument): ``ranges`` and ``source_rows`` (rows per unit: (venue, account_id), account_id
    None for a public table) are known then. :meth:`start` streams the
    passes; :meth:`ready` blocks until a range's spill file is complete; :meth:`close` stops
    the stream (on error), waits for the thread and re-raises its error.

    Args:
        conn: ADBC connection, used by this object only until :meth:`close`.
        layout: the table's layout.
        day: the UTC day.
        chunk_rows: most rows of a range (but one instrument that cannot be sliced).
        spill_dir: existing directory for the spill files.
        passes: how many filtered SELECTs the day is read in (1: one unfiltered stream).
    """

    def __init__(self, conn, layout: TableLayout, day: date, chunk_rows: int, spill_dir: Path,
                 passes: int) -> None:
        self.layout, self.day, self.spill_dir = layout, day, spill_dir
        self._conn = conn
        self._cur = conn.cursor()
        self._cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        group = quote_ident(layout.group_column) if layout.group_column else "NULL::text"
        account = quote_ident(layout.account_column) if layout.account_column else "NULL::bigint"
        self._cur.execute(f"SELECT venue, {account} AS a, {group} AS g, count(*) AS n "
                          f"FROM {quote_ident(layout.table)} WHERE {day_filter(layout, day)} "
                          "GROUP BY 1, 2, 3")
        counts = [((r["venue"], r["a"]), r["g"], r["n"])
                  for r in self._cur.fetch_arrow_table().to_pylist()]
        self.ranges, venues, accounts, names, base, slices = _plan(counts, chunk_rows,
                                                                   layout.time_sliceable)
        self.source_rows: dict[Unit, int] = {}
        for unit, _, n in sorted(counts, key=lambda c: unit_order(c[0])):
            self.source_rows[unit] = self.source_rows.get(unit, 0) + n
        self._n_names, self._n_accounts = len(names), len(accounts)
        self._venue_set, self._name_set = pa.array(venues, pa.string()), pa.array(names, pa.string())
        self._account_set = pa.array(accounts, pa.int64()) if layout.account_column else None
        self._base, self._slices = pa.array(base, pa.int64()), pa.array(slices, pa.int64())
        self.passes = plan_passes(self.ranges, passes if layout.group_column else 1)
        self._done = 0  # ranges[:_done] have complete spill files
        self._error: BaseException | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Stream the passes on a thread of its own."""
        self._thread = threading.Thread(target=self._run, name="export-spill", daemon=True)
        self._thread.start()

    def ready(self, index: int) -> Range:
        """``ranges[index]`` once its spill file is complete (its ``path`` None when no row went
        to it). Raises the streaming thread's error, if any."""
        with self._cond:
            self._cond.wait_for(lambda: self._done > index or self._error is not None)
            if self._error is not None:
                raise ExportStreamError("streaming the day failed") from self._error
        return self.ranges[index]

    def stop(self) -> None:
        """Ask the streaming thread to stop at its next record batch (the consumer failed)."""
        self._stop = True

    def close(self) -> None:
        """Stop streaming (when still running) and wait for the thread.

        Raises:
            The streaming thread's error, if it failed (not when this call stopped it).
        """
        self._stop = True
        if self._thread is not None:
            self._thread.join()
        self._cur.close()
        if self._error is not None and not isinstance(self._error, _Stopped):
            raise self._error

    def _run(self) -> None:
        try:
            for rng_ids in self.passes:
                self._stream_pass(rng_ids)
                with self._cond:
                    self._done = rng_ids.stop
                    self._cond.notify_all()
            self._conn.commit()
        except BaseException as exc:  # handed to the consumer through ready() / close()
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _batches(self, sql: str) -> Iterator[pa.RecordBatch]:
        """The query's record batches, fetched on one more thread (ADBC decodes the binary COPY
        without the GIL) so that decoding overlaps routing."""
        batches: queue.Queue = queue.Queue(maxsize=2)
        cur = self._cur

        def fetch() -> None:
            try:
                cur.execute(sql)
                for batch in cur.fetch_record_batch():
                    if self._stop:
                        raise _Stopped("export stopped")
                    batches.put(batch)
                batches.put(None)
            except BaseException as exc:
                batches.put(exc)

        fetcher = threading.Thread(target=fetch, name="export-fetch", daemon=True)
        fetcher.start()
        try:
            while (item := batches.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop = self._stop or fetcher.is_alive()
            while fetcher.is_alive():  # unblock a fetcher waiting on a full queue
                try:
                    batches.get(timeout=0.1)
                except queue.Empty:
                    pass
            fetcher.join()

    def _stream_pass(self, rng_ids: range) -> None:
        layout = self.layout
        where = day_filter(layout, self.day)
        if len(self.passes) > 1:
            where += f" AND ({pass_filter(layout, self.ranges[rng_ids.start:rng_ids.stop])})"
        day_start_us = start_of_day_us(self.day)
        writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        try:
            for batch in self._batches(f"SELECT {layout.select_list()} "
                                       f"FROM {quote_ident(layout.table)} WHERE {where}"):
                if self._stop:
                    raise _Stopped("export stopped")
                batch = batch.cast(layout.schema)
                unit = pc.index_in(batch.column("venue"), value_set=self._venue_set).cast(pa.int64())
                if self._account_set is not None:
                    a = pc.index_in(batch.column(layout.account_column),
                                    value_set=self._account_set).cast(pa.int64())
                    unit = pc.add(pc.multiply(unit, self._n_accounts), a)
                g = (pc.index_in(batch.column(layout.group_column), value_set=self._name_set)
                     if layout.group_column else pa.repeat(0, batch.num_rows).cast(pa.int32()))
                cell = pc.add(pc.multiply(unit, self._n_names), g.cast(pa.int64()))
                n_slices = pc.take(self._slices, cell)
                offset = pc.subtract(batch.column(layout.time_column).cast(pa.int64()),
                                     day_start_us)
                piece = pc.min_element_wise(pc.divide(pc.multiply(offset, n_slices), DAY_US),
                                            pc.subtract(n_slices, 1))
                rid = pc.add(pc.take(self._base, cell), piece)
                order = pc.sort_indices(rid)
                routed = batch.take(order)
                counts_by_range = sorted(
                    (c["values"], c["counts"]) for c in pc.value_counts(rid).to_pylist())
                pos = 0
                for r, n in counts_by_range:
                    if r not in writers:
                        self.ranges[r].path = self.spill_dir / f"range-{r}.arrow"
                        writers[r] = ipc.new_stream(self.ranges[r].path, layout.schema)
                    writers[r].write_batch(routed.slice(pos, n))
                    pos += n
        finally:
            for w in writers.values():
                w.close()


class ExportStreamError(RuntimeError):
    """Streaming the day from the database failed (the cause is chained)."""


class _Stopped(Exception):
    """The consumer stopped the stream (:meth:`DaySpill.close` before the end)."""


def _sort_order(layout: TableLayout, table: pa.Table, names: list[str | None],
                day_start_us: int) -> pa.Array:
    """Indices that sort ``table`` (one range's rows) by the layout's sort key. Instrument names
    become ordinal codes in ``names`` (the range's instruments, byte order); when the time
    column follows, code and time since the start of the day fold into one int64 key
    (code * 2^37 + µs; a day is < 2^37 µs), the fastest sort."""
    columns = {c: table.column(c) for c in layout.sort_key}
    keys = list(layout.sort_key)
    if layout.group_column:
        value_set = pa.array(sorted(names, key=_name_order), pa.string())
        code = pc.index_in(table.column(layout.group_column), value_set=value_set).cast(pa.int64())
        if len(keys) > 1 and keys[1] == layout.time_column:
            offset = pc.subtract(table.column(layout.time_column).cast(pa.int64()), day_start_us)
            columns["_key"] = pc.add(pc.shift_left(code, 37), offset)
            keys[:2] = ["_key"]
        else:
            columns["_key"] = code
            keys[0] = "_key"
    return pc.sort_indices(pa.table({c: columns[c] for c in keys}),
                           sort_keys=[(c, "ascending") for c in keys])


def sorted_range(layout: TableLayout, rng: Range, day_start_us: int) -> pa.Table:
    """A range's rows sorted by the layout's sort key, with the file's columns (``venue``
    dropped before the sort's ``take``, so it is never copied); its spill file is removed.

    The spill file is read into memory, not memory-mapped: with a mapping the ``take`` faults
    the pages in one by one, and in the same-run comparison with main (docs/benchmarks.md,
    2026-12-06) that was no faster in CPU and slower in wall time on a loaded machine."""
    with ipc.open_stream(rng.path) as reader:
        table = reader.read_all()
    rng.path.unlink()
    order = _sort_order(layout, table, rng.names, day_start_us)
    return table.drop_columns(["venue"]).take(order)

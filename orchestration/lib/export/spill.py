"""Spill and sort: a day's rows are streamed once from a database snapshot, routed to one Arrow
IPC spill file per *range* (consecutive instruments holding at most ``chunk_rows`` rows, or a
time slice of one busy instrument), and each range is read back and sorted in memory by the
table's sort key. Memory is bounded by ``chunk_rows``, not by the size of the day."""

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from orchestration.lib.export.layout import TableLayout, day_filter, quote_ident, start_of_day_us

#: One day in µs.
DAY_US = 86_400_000_000


@dataclass
class Range:
    """Rows of one venue sorted together in memory: consecutive instruments (byte order) or,
    when ``sliced``, one time slice of a single busy instrument. ``rows`` is the expected count
    (from the snapshot's counts; approximate for slices), ``path`` its spill file."""

    venue: str
    names: list[str | None] = field(default_factory=list)
    rows: int = 0
    sliced: bool = False
    path: Path | None = None


def _name_order(name: str | None) -> tuple[bool, str]:
    """Sort key of instrument names: byte order of UTF-8 (= code point order), NULL last."""
    return name is None, name or ""


def _plan(counts: list[tuple[str, str | None, int]], chunk_rows: int, sliceable: bool):
    """Ranges over the day's (venue, instrument, rows) counts, and the routing arrays. An
    instrument with more than ``chunk_rows`` rows is cut into time slices when ``sliceable``
    (:attr:`TableLayout.time_sliceable`), else it gets a range of its own.

    Returns (ranges, venues, names, base, slices): a row whose venue and instrument have the
    ordinals v, g in ``venues`` / ``names`` goes to range ``base[c] + min(slices[c] - 1,
    offset_us * slices[c] // DAY_US)`` with ``c = v * len(names) + g`` and ``offset_us`` its time
    since the start of the day.
    """
    venues = sorted({v for v, _, _ in counts})
    names = sorted({g for _, g, _ in counts}, key=_name_order)
    vi = {v: i for i, v in enumerate(venues)}
    gi = {g: i for i, g in enumerate(names)}
    base = [0] * (len(venues) * len(names))
    slices = [1] * len(base)
    ranges: list[Range] = []
    for venue, group, n in sorted(counts, key=lambda c: (c[0], *_name_order(c[1]))):
        cell = vi[venue] * len(names) + gi[group]
        if n > chunk_rows and sliceable:
            k = -(-n // chunk_rows)
            base[cell], slices[cell] = len(ranges), k
            ranges.extend(Range(venue, [group], n // k, sliced=True) for _ in range(k))
            continue
        last = ranges[-1] if ranges else None
        if last is None or last.sliced or last.venue != venue or last.rows + n > chunk_rows:
            ranges.append(Range(venue))
        ranges[-1].names.append(group)
        ranges[-1].rows += n
        base[cell] = len(ranges) - 1
    return ranges, venues, names, base, slices


def spill_day(dsn: str, layout: TableLayout, day: date, chunk_rows: int,
              spill_dir: Path) -> tuple[list[Range], dict[str, int]]:
    """Count and stream the day in one snapshot, routing rows into per-range spill files.
    Returns the ranges (with their spill paths) and the snapshot's row count per venue."""
    table, where = quote_ident(layout.table), day_filter(layout, day)
    group = quote_ident(layout.group_column) if layout.group_column else "NULL::text"
    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(f"SELECT venue, {group} AS g, count(*) AS n FROM {table} "
                    f"WHERE {where} GROUP BY 1, 2")
        counts = [(r["venue"], r["g"], r["n"]) for r in cur.fetch_arrow_table().to_pylist()]
        ranges, venues, names, base, slices = _plan(counts, chunk_rows, layout.time_sliceable)
        source_rows: dict[str, int] = {}
        for venue, _, n in counts:
            source_rows[venue] = source_rows.get(venue, 0) + n
        if not ranges:
            return [], source_rows
        venue_set, name_set = pa.array(venues, pa.string()), pa.array(names, pa.string())
        base_arr, slices_arr = pa.array(base, pa.int64()), pa.array(slices, pa.int64())
        day_start_us = start_of_day_us(day)
        columns = ", ".join(quote_ident(n) for n in layout.schema.names)
        cur.execute(f"SELECT {columns} FROM {table} WHERE {where}")
        writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        try:
            for batch in cur.fetch_record_batch():
                batch = batch.cast(layout.schema)
                v = pc.index_in(batch.column("venue"), value_set=venue_set)
                g = (pc.index_in(batch.column(layout.group_column), value_set=name_set)
                     if layout.group_column else pa.repeat(0, batch.num_rows).cast(pa.int32()))
                cell = pc.add(pc.multiply(v.cast(pa.int64()), len(names)), g.cast(pa.int64()))
                n_slices = pc.take(slices_arr, cell)
                offset = pc.subtract(batch.column(layout.time_column).cast(pa.int64()),
                                     day_start_us)
                piece = pc.min_element_wise(pc.divide(pc.multiply(offset, n_slices), DAY_US),
                                            pc.subtract(n_slices, 1))
                rid = pc.add(pc.take(base_arr, cell), piece)
                order = pc.sort_indices(rid)
                routed = batch.take(order)
                counts_by_range = sorted(
                    (c["values"], c["counts"]) for c in pc.value_counts(rid).to_pylist())
                pos = 0
                for r, n in counts_by_range:
                    if r not in writers:
                        ranges[r].path = spill_dir / f"range-{r}.arrow"
                        writers[r] = ipc.new_stream(ranges[r].path, layout.schema)
                    writers[r].write_batch(routed.slice(pos, n))
                    pos += n
        finally:
            for w in writers.values():
                w.close()
        conn.commit()
    return ranges, source_rows


def sorted_range(layout: TableLayout, rng: Range, day_start_us: int) -> pa.Table:
    """Read a range's spill file and sort it by the layout's sort key. Instrument names become
    ordinal codes (byte order); when the time column follows, code and time since the start of
    the day fold into one int64 key (code * 2^37 + µs; a day is < 2^37 µs), the fastest sort."""
    with ipc.open_stream(rng.path) as reader:
        table = reader.read_all()
    rng.path.unlink()
    columns = {c: table.column(c) for c in layout.sort_key}
    keys = list(layout.sort_key)
    if layout.group_column:
        names = pa.array(sorted(rng.names, key=_name_order), pa.string())
        code = pc.index_in(table.column(layout.group_column), value_set=names).cast(pa.int64())
        if len(keys) > 1 and keys[1] == layout.time_column:
            offset = pc.subtract(table.column(layout.time_column).cast(pa.int64()), day_start_us)
            columns["_key"] = pc.add(pc.shift_left(code, 37), offset)
            keys[:2] = ["_key"]
        else:
            columns["_key"] = code
            keys[0] = "_key"
    order = pc.sort_indices(pa.table({c: columns[c] for c in keys}),
                            sort_keys=[(c, "ascending") for c in keys])
    return table.take(order)


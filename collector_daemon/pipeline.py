"""Bounded pipeline between the socket readers and the database writer.

Readers append decoded rows to per-table buffers (a plain list append, no await). A buffer that
reaches ``batch_rows`` is *sealed* into a batch and put on a bounded queue; when the queue is full,
sealing waits, so the reader stops reading the socket (TCP backpressure reaches the exchange)
instead of growing memory. A sealer waits for room *before* it takes the buffer, so several
readers (connections) held back at once share one full buffer: rows in memory stay bounded by
queue_batches + 1 batches (the queue and the batch being written) plus one buffer per table
and a frame per reader, however many connections there are. A timer seals partial buffers every
``flush_interval_s`` so rows never wait longer than that for a write. Nothing is dropped:
``close()`` seals what is left and waits until the writer has written (or spooled) every batch.

With a :class:`~collector_daemon.storage.spool.Spool`, a batch the database cannot take (a
transient error: server down, connection lost, disk full on the server) is appended to the spool
and the pipeline keeps going. From then on every batch goes to the spool behind it, preserving
order, while a drainer retries the database with backoff and replays the spool oldest first; when
it is empty, writes go direct again. A spool left by a crash is drained before new data; replayed
batches are written insert-if-absent whatever their table (``write(..., replay=True)``). If the
spool is full, the batch is dropped and its time range becomes a ``data_gaps`` row of its stream,
``open`` when the venue can serve it again over REST (trades) else ``unrecoverable`` (quotes), and
an error is logged every minute.
That gap row is appended to the spool at once, past its cap (``Spool.append(over_cap=True)``), so
it survives a shutdown with the database still down or a crash; only if the disk refuses even
that is it kept in memory and written when the database is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from collector_daemon.core.gaps import Gap, GapStatus
from collector_daemon.rows import DATA_GAPS, TableSpec
from collector_daemon.storage.spool import Spool
from collector_daemon.storage.writer import is_transient

log = logging.getLogger(__name__)

#: ``write(table, rows, retry=..., replay=...) -> inserted`` (the BatchWriter's ``write``).
WriteFn = Callable[..., Awaitable[int]]
#: Called after each batch is written: ``(table, rows, inserted, sealed_at_monotonic)``.
WrittenFn = Callable[[TableSpec, list[tuple], int, float], None]


class Pipeline:
    """Batches rows per table and feeds them to one writer task.

    Args:
        write: coroutine writing one batch, returning the rows inserted; called with
            ``retry=False`` when a spool is configured (transient errors must raise), and with
            ``replay=True`` for batches replayed from the spool (they may be stored already).
        batch_rows: rows per batch.
        flush_interval_s: longest time a row waits in a partial buffer (s).
        queue_batches: sealed batches held before readers are made to wait.
        on_written: optional callback per written batch (metrics).
        spool: durable overflow for database outages; None = retry in place (readers wait).
        drain_backoff_s: (first, max) delay between attempts to drain the spool (s).
    """

    def __init__(self, write: WriteFn, *, batch_rows: int = 5_000, flush_interval_s: float = 1.0,
                 queue_batches: int = 4, on_written: WrittenFn | None = None,
                 spool: Spool | None = None, drain_backoff_s: tuple[float, float] = (0.5, 10.0)) -> None:
        self._write = write
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self._buffers: dict[str, tuple[TableSpec, list[tuple]]] = {}
        self._queue: asyncio.Queue[tuple[TableSpec, list[tuple], float] | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(queue_batches)   # free places in the queue
        self._on_written = on_written
        self._tasks: list[asyncio.Task] = []
        self.spool = spool
        self._drain_backoff = drain_backoff_s
        self._spooling = bool(spool)     # a spool left by a crash is drained before new data
        self._drainer: asyncio.Task | None = None
        self._dropped_gaps: list[tuple] = []   # gap rows the disk refused too (kept in memory)
        self._last_full_log = 0.0
        self.rows_pending = 0
        self.backpressure_waits = 0
        self.batches_spooled = 0
        self.rows_spooled = 0
        self.rows_drained = 0
        self.rows_dropped = 0

    def start(self) -> None:
        """Start the writer and flush-timer tasks (and the drainer if a spool is left over)."""
        self._tasks = [asyncio.create_task(self._writer(), name="pipeline-writer"),
                       asyncio.create_task(self._timer(), name="pipeline-timer")]
        if self._spooling:
            log.warning("spool: %d bytes left by an earlier run; draining before new data",
                        self.spool.size_bytes)
            self._start_drainer()

    @property
    def writer_task(self) -> asyncio.Task:
        """The task writing batches; it ends with an exception on a non-transient write error."""
        return self._tasks[0]

    @property
    def full(self) -> bool:
        """True while readers are held back (the writer queue is full)."""
        return self._slots.locked()

    @property
    def spooling(self) -> bool:
        """True while batches go to the spool (database unavailable or spool being drained)."""
        return self._spooling

    @property
    def queue_depth(self) -> int:
        """Sealed batches waiting for the writer."""
        return self._queue.qsize()

    def spool_stats(self) -> dict[str, int]:
        """Spool figures for the metrics (read at scrape time, from any thread): ``bytes`` (gauge,
        bytes on disk), ``spooling`` (gauge, 1 while batches go to the spool), and the counters
        ``batches_spooled``, ``rows_spooled``, ``rows_drained``, ``rows_dropped`` (spool full or
        disk refused), ``corrupt_records`` and ``corrupt_bytes`` (quarantined, not replayed)."""
        spool = self.spool
        return {"bytes": spool.size_bytes if spool is not None else 0,
                "spooling": int(self._spooling), "batches_spooled": self.batches_spooled,
                "rows_spooled": self.rows_spooled, "rows_drained": self.rows_drained,
                "rows_dropped": self.rows_dropped,
                "corrupt_records": spool.corrupt_records if spool is not None else 0,
                "corrupt_bytes": spool.corrupt_bytes if spool is not None else 0}

    def add(self, table: TableSpec, rows: list[tuple]) -> bool:
        """Append rows; True when the table's buffer is full and the caller must ``await seal(table)``."""
        entry = self._buffers.get(table.name)
        if entry is None:
            entry = self._buffers[table.name] = (table, [])
        entry[1].extend(rows)
        self.rows_pending += len(rows)
        return len(entry[1]) >= self.batch_rows

    async def seal(self, table: TableSpec) -> None:
        """Move the table's full buffer to the writer queue (after :meth:`add` returned True).

        Waits for room in the queue first; the buffer stays in place meanwhile, so the other
        readers append to it and wait here too. Once there is room, the buffer is sealed only if
        it is still full: another waiter may have taken it, and a few rows are left to fill."""
        await self._seal(table, full_only=True)

    async def seal_all(self) -> None:
        """Seal every non-empty buffer (flush timer, shutdown)."""
        for name in list(self._buffers):
            entry = self._buffers.get(name)
            if entry is not None:
                await self._seal(entry[0], full_only=False)

    async def _seal(self, table: TableSpec, full_only: bool) -> None:
        entry = self._buffers.get(table.name)
        if entry is None or not entry[1]:
            return
        if self._slots.locked():
            self.backpressure_waits += 1
        await self._slots.acquire()
        entry = self._buffers.get(table.name)
        if entry is None or not entry[1] or (full_only and len(entry[1]) < self.batch_rows):
            self._slots.release()
            return
        del self._buffers[table.name]
        self._queue.put_nowait((entry[0], entry[1], time.monotonic()))

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Seal what is buffered, write (or spool) every batch, stop the tasks.

        While spooling, one last drain is attempted for up to ``drain_timeout_s``; what it cannot
        write stays in the spool for the next start.
        """
        self._tasks[1].cancel()
        await self.seal_all()
        await self._queue.put(None)
        await self._tasks[0]
        if self._drainer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._drainer), drain_timeout_s)
            except asyncio.TimeoutError:
                self._drainer.cancel()
                log.warning("spool: %d bytes left for the next start", self.spool.size_bytes)
        if self._dropped_gaps:
            log.error("spool: %d gap rows of dropped batches could not be stored (disk and "
                      "database refused them): %s", len(self._dropped_gaps), self._dropped_gaps)
        if self.spool is not None:
            self.spool.release()

    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.seal_all()

    async def _writer(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            self._slots.release()
            table, rows, sealed_at = item
            if self.spool is None:
                inserted = await self._write(table, rows)
            elif self._spooling:
                self._to_spool(table, rows)
                continue
            else:
                try:
                    inserted = await self._write(table, rows, retry=False)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("database unavailable (%s: %s): spooling batches to %s",
                                type(exc).__name__, exc, self.spool.directory)
                    self._spooling = True
                    self._to_spool(table, rows)
                    self._start_drainer()
                    continue
            self.rows_pending -= len(rows)
            if self._on_written is not None:
                self._on_written(table, rows, inserted, sealed_at)

    def _to_spool(self, table: TableSpec, rows: list[tuple]) -> None:
        try:
            stored = self.spool.append(table, rows)
        except OSError as exc:
            log.error("spool: cannot write to %s: %s", self.spool.directory, exc)
            stored = False
        self.rows_pending -= len(rows)
        if stored:
            self.batches_spooled += 1
            self.rows_spooled += len(rows)
            return
        self.rows_dropped += len(rows)
        gap = _gap_row(table, rows)
        if gap is not None:
            try:
                self.spool.append(DATA_GAPS, [gap], over_cap=True)
            except OSError as exc:
                log.error("spool: cannot record the dropped batch's gap on disk (%s); keeping it "
                          "in memory until the database is back", exc)
                self._dropped_gaps.append(gap)
        now = time.monotonic()
        if now - self._last_full_log >= 60.0:
            self._last_full_log = now
            log.error("spool full (%d bytes, cap %d): dropped %d rows so far; their windows are "
                      "recorded in data_gaps", self.spool.size_bytes, self.spool.max_bytes,
                      self.rows_dropped)

    def _start_drainer(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="spool-drainer")

    async def _drain(self) -> None:
        delay, cap = self._drain_backoff
        while True:
            try:
                await self.spool.drain(self._drain_write)
                if self._dropped_gaps:
                    gaps = list(self._dropped_gaps)
                    await self._write(DATA_GAPS, gaps, retry=False, replay=True)
                    del self._dropped_gaps[:len(gaps)]
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await asyncio.sleep(delay)
                delay = min(cap, delay * 2)
                continue
            if not self.spool and not self._dropped_gaps:
                self._spooling = False
                log.info("spool drained (%d rows so far); writing directly again", self.rows_drained)
                return

    async def _drain_write(self, table: TableSpec, rows: list[tuple]) -> int:
        inserted = await self._write(table, rows, retry=False, replay=True)
        self.rows_drained += len(rows)
        if self._on_written is not None:
            self._on_written(table, rows, inserted, time.monotonic())
        return inserted


def _gap_row(table: TableSpec, rows: list[tuple]) -> tuple | None:
    """A data_gaps row covering the exchange time range of a dropped batch of a venue stream
    (None for other tables: events, rejected frames). The venue is the rows' first column."""
    from collector_daemon.venues import UnknownVenue, get_venue
    try:
        venue = get_venue(rows[0][0])
    except (UnknownVenue, IndexError, TypeError):
        return None
    spec = next((s for s in venue.stream_specs() if s.table.name == table.name), None)
    if spec is None:
        return None
    ts = table.exchange_ts_index
    start, end = min(r[ts] for r in rows), max(r[ts] for r in rows)
    status = GapStatus.OPEN if spec.recoverable else GapStatus.UNRECOVERABLE
    return Gap(venue.name, spec.name, "*", start, end, None, None, "spool_full", status,
               f"spool full: {len(rows)} rows dropped").row()

"""Batch writer: rows to PostgreSQL/TimescaleDB by binary COPY, exactly once.

Keyed tables (quotes, trades) are written insert-if-absent:

* fast path: ``COPY`` straight into the table inside a transaction. A batch that cannot conflict
  (the normal case for a single live collector) costs one COPY (~300k rows/s into a hypertable,
  ../shared/reference/ingest-measurements.md section 3);
* when that COPY hits the natural key (a replay, a REST backfill overlapping the stream, a
  redundant collector, a restart), the transaction is rolled back and the batch goes through
  ``COPY`` into a temporary staging table + ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``
  (~175k rows/s). After a conflict the table stays on the staging path for ``conflict_cooldown_s``
  so a stream of overlapping batches does not pay for two writes each.

Tables whose rows are updated in place (``TableSpec.upsert``: an exchange's open candle) go
through the staging table + ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE`` the stored row may
still change; the last row per key of a batch wins.

Append-only tables (connection_events, rejected_messages, data_gaps) take a plain COPY. A batch
*replayed* from the spool (``write(..., replay=True)``) may have been written before (a segment
drained part-way, then retried or left by a crash; a write whose commit landed after it timed
out), so a replayed append-only batch goes through its staging table + ``INSERT ... SELECT ...
WHERE NOT EXISTS`` an identical row (same venue and first timestamp, indexed, and the same other
columns: the row's identity, since these rows carry µs timestamps; ``data_gaps.status`` and
``reason`` are left out because the recovery updates them). Rows repeated inside one batch are
all kept: only rows already stored are skipped.

One write attempt (taking a connection, writing, giving it back) is bounded by
``write_timeout_s``: a database that hangs instead of refusing makes the attempt fail with
``TimeoutError`` (transient) within that bound, so the pipeline spools instead of holding the
batch for the 120 s command timeout. The connection of a timed-out attempt is terminated, never
reused (its COPY may still be half-way in the protocol).

Transient database errors (connection lost, server shutting down, out of resources) are retried
with capped exponential backoff, holding the batch. A row the database refuses as data (bad
value, check violation) is isolated by bisecting the batch and stored in ``rejected_messages``;
the rest of the batch is written.

Timestamps in rows are integers (µs since the Unix epoch, UTC); the connections encode them
with a tuple-format ``timestamptz`` codec, so no ``datetime`` is built per row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception, wait_random_exponential

from collector_daemon.rows import REJECTED_MESSAGES, REJECTED_RAW_CAP, TABLES, TableSpec
from collector_daemon.storage.numeric import decode_numeric, encode_numeric

log = logging.getLogger(__name__)

#: µs between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
PG_EPOCH_US = 946_684_800_000_000

#: Longest one write attempt may take (s): taking a connection, the COPY, giving it back.
WRITE_TIMEOUT_S = 5.0

#: Columns of append-only rows that change after they are written, left out of the replay match.
_MUTABLE = {"data_gaps": ("status", "reason")}


def _encode_ts(us: int) -> tuple[int]:
    return (us - PG_EPOCH_US,)


def _decode_ts(value: tuple[int]) -> int:
    return value[0] + PG_EPOCH_US


async def init_connection(conn: asyncpg.Connection) -> None:
    """Make ``timestamptz`` travel as µs-since-epoch integers on this connection, and encode
    ``numeric`` with :mod:`collector_daemon.storage.numeric` (memoised; Bybit's decimal strings)."""
    await conn.set_type_codec("timestamptz", schema="pg_catalog", encoder=_encode_ts,
                              decoder=_decode_ts, format="tuple")
    await conn.set_type_codec("numeric", schema="pg_catalog", encoder=encode_numeric,
                              decoder=decode_numeric, format="binary")


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: lost connections, shutdowns, resource exhaustion."""
    if isinstance(exc, (OSError, ConnectionError, asyncio.TimeoutError,
                        asyncpg.exceptions.ConnectionDoesNotExistError,
                        asyncpg.exceptions.InterfaceError)):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return code[:2] in {"08", "53", "57", "58", "40", "55"} or code == "XX000"
    return False


@contextlib.asynccontextmanager
async def bounded_connection(pool: asyncpg.Pool, timeout_s: float) -> AsyncIterator[asyncpg.Connection]:
    """``async with bounded_connection(pool, s) as conn``: a pool connection, where taking it, the
    body and giving it back together take at most ``timeout_s`` seconds. A connection that fails
    with a transient error (see :func:`is_transient`) is terminated rather than given back, so
    the next attempt gets a fresh one instead of one a server restart or a timeout left
    mid-command.

    Raises:
        TimeoutError: the bound passed (a hung server).
        ConnectionError: the connection's protocol state broke (seen when the server went away
            in the middle of a COPY).
        Exception: whatever the body raises.
    """
    conn = None
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.acquire()
            yield conn
    except TimeoutError:
        _terminate(conn)
        raise TimeoutError(f"database did not answer within {timeout_s} s") from None
    except asyncpg.exceptions.InternalClientError as exc:
        _terminate(conn)
        raise ConnectionError(f"database connection unusable: {exc}") from exc
    except Exception as exc:
        if is_transient(exc):
            _terminate(conn)
        raise
    finally:
        if conn is not None:
            await pool.release(conn, timeout=timeout_s)   # terminates it if the reset hangs


def _terminate(conn: asyncpg.Connection | None) -> None:
    # a connection the server closed has already left the pool (its proxy raises InterfaceError)
    if conn is not None:
        with contextlib.suppress(asyncpg.exceptions.InterfaceError):
            conn.terminate()


def is_bad_data(exc: BaseException) -> bool:
    """The database refuses a value in the batch (SQLSTATE 22xxx data, 23xxx except unique)."""
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return code.startswith("22") or (code.startswith("23") and code != "23505")
    return False


class BatchWriter:
    """Writes batches of row tuples; one instance per collector, on its own asyncpg pool.

    Args:
        dsn: PostgreSQL URL.
        venue: stored in rejected_messages rows created for rows the database refuses.
        pool_size: connections (one per concurrent write; the pipeline uses one writer).
        conflict_cooldown_s: seconds a table stays on the staging path after a conflict.
        on_retry: called with the exception on every transient failure (metrics, logs).
        write_timeout_s: longest one write attempt may take (s); then it fails with
            ``TimeoutError`` (transient) and its connection is terminated.
    """

    def __init__(self, dsn: str, *, venue: str = "", pool_size: int = 2,
                 conflict_cooldown_s: float = 30.0,
                 on_retry: Callable[[BaseException], None] | None = None,
                 write_timeout_s: float = WRITE_TIMEOUT_S) -> None:
        self._dsn = dsn
        self._venue = venue
        self._pool_size = pool_size
        self._cooldown = conflict_cooldown_s
        self.write_timeout_s = write_timeout_s
        self._staging_until: dict[str, float] = {}
        self._on_retry = on_retry
        self.pool: asyncpg.Pool | None = None
        self._owns_pool = True
        self.rows_written: dict[str, int] = {}
        self.rows_duplicate: dict[str, int] = {}
        self.rows_refused = 0

    async def open(self) -> None:
        """Connect, retrying transient errors forever (the database may still be starting).

        Raises:
            ssl.SSLCertVerificationError: at once, not retried: the server's certificate fails
                verification (``sslmode=verify-full`` with the wrong ``sslrootcert`` or host
                name), a configuration error. (Once running, a failing reconnect is treated as
                an outage: batches are spooled.)
        """
        async for attempt in self._retrying(
                lambda exc: is_transient(exc) and not isinstance(exc, ssl.SSLCertVerificationError)):
            with attempt:
                self.pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._pool_size, init=self._init_connection,
                    command_timeout=120)

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        """Timestamp codec, plus one session-private staging table per table, holding the
        written columns only (keyed tables use it on conflicts, append-only ones when a batch is
        replayed from the spool)."""
        await init_connection(conn)
        for table in TABLES.values():
            await conn.execute(f"CREATE TEMP TABLE _stage_{table.name} ON COMMIT DELETE ROWS AS "
                               f"SELECT {', '.join(table.columns)} FROM {table.name} WITH NO DATA")

    def sibling(self, *, conflict_cooldown_s: float = 3600.0) -> "BatchWriter":
        """Another writer on this writer's (open) pool, with its own counters and conflict state:
        the collector's gap recovery writes REST rows through it, so they share the pool but not
        the stream's figures. Closing it leaves the pool open."""
        other = BatchWriter(self._dsn, venue=self._venue, conflict_cooldown_s=conflict_cooldown_s,
                            on_retry=self._on_retry, write_timeout_s=self.write_timeout_s)
        other.pool, other._owns_pool = self.pool, False
        return other

    async def close(self) -> None:
        """Close the pool (a :meth:`sibling` only lets go of it). Call only after the pipeline
        has flushed every batch."""
        if self.pool is not None and self._owns_pool:
            await self.pool.close()
        self.pool = None

    def terminate(self) -> None:
        """Close the pool's connections at once, without waiting for the server (shutdown
        with the database gone; a :meth:`sibling` only lets go of the pool)."""
        if self.pool is not None and self._owns_pool:
            self.pool.terminate()
        self.pool = None

    def _retrying(self, retry: Callable[[BaseException], bool] = is_transient) -> AsyncRetrying:
        def before_sleep(state) -> None:
            exc = state.outcome.exception()
            log.warning("database unavailable (%s: %s); waiting %.1f s before retrying",
                        type(exc).__name__, exc, state.next_action.sleep if state.next_action else 0.0)
            if self._on_retry is not None:
                self._on_retry(exc)
        return AsyncRetrying(retry=retry_if_exception(retry),
                             wait=wait_random_exponential(multiplier=0.2, max=10),
                             before_sleep=before_sleep, reraise=True)

    async def write(self, table: TableSpec, rows: Sequence[tuple], *, retry: bool = True,
                    replay: bool = False) -> int:
        """Write one batch; returns the rows actually inserted (duplicates are not counted).

        With ``retry`` transient errors are retried until they pass; without it they are raised
        at once (the pipeline then spools the batch). ``replay``: the batch comes from the spool
        and may be stored already; append-only tables then skip rows already stored (keyed tables
        are insert-if-absent anyway). Rows the database refuses as data are moved to
        ``rejected_messages`` (``rows_refused`` counts them); the rest is written. Each attempt
        takes at most ``write_timeout_s``.

        Raises:
            Exception: a transient error when ``retry`` is False (see :func:`is_transient`;
                ``TimeoutError`` when an attempt passed ``write_timeout_s``), or any
                non-transient error that is not about a row's data (e.g. a missing table).
        """
        if retry:
            async for attempt in self._retrying():
                with attempt:
                    inserted = await self._write_isolating(table, rows, replay)
        else:
            inserted = await self._write_isolating(table, rows, replay)
        self.rows_written[table.name] = self.rows_written.get(table.name, 0) + inserted
        if table.keyed or replay:
            self.rows_duplicate[table.name] = (
                self.rows_duplicate.get(table.name, 0) + len(rows) - inserted)
        return inserted

    async def _write_isolating(self, table: TableSpec, rows: Sequence[tuple], replay: bool) -> int:
        try:
            return await self._write_once(table, rows, replay)
        except asyncpg.PostgresError as exc:
            if not is_bad_data(exc):
                raise
            if len(rows) == 1:
                await self._refuse(table, rows[0], exc)
                return 0
            mid = len(rows) // 2
            return (await self._write_isolating(table, rows[:mid], replay)
                    + await self._write_isolating(table, rows[mid:], replay))

    async def _refuse(self, table: TableSpec, row: tuple, exc: BaseException) -> None:
        raw = repr(dict(zip(table.columns, row)))
        log.error("database refused a %s row: %s", table.name, exc)
        self.rows_refused += 1
        await self._write_once(REJECTED_MESSAGES, [(
            time.time_ns() // 1000, self._venue, "writer",
            f"database refused {table.name} row: {type(exc).__name__}: {exc}"[:1000],
            raw[:REJECTED_RAW_CAP].replace("\x00", "\\x00"), len(raw))])

    async def _write_once(self, table: TableSpec, rows: Sequence[tuple], replay: bool = False) -> int:
        assert self.pool is not None, "BatchWriter.open() was not called"
        async with bounded_connection(self.pool, self.write_timeout_s) as conn:
            return await self._write_on(conn, table, rows, replay)

    async def _write_on(self, conn: asyncpg.Connection, table: TableSpec, rows: Sequence[tuple],
                        replay: bool = False) -> int:
        if table.upsert is not None:
            return await self._write_upsert(conn, table, rows)
        if not table.keyed:
            if replay:
                return await self._write_absent(conn, table, rows)
            async with conn.transaction():
                await conn.copy_records_to_table(table.name, records=rows,
                                                 columns=table.columns)
            return len(rows)
        if self._staging_until.get(table.name, 0.0) < time.monotonic():
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table(table.name, records=rows,
                                                     columns=table.columns)
                return len(rows)
            except asyncpg.UniqueViolationError:
                self._staging_until[table.name] = time.monotonic() + self._cooldown
        return await self._write_staged(conn, table, rows)

    @staticmethod
    async def _via_stage(conn: asyncpg.Connection, table: TableSpec, rows: Sequence[tuple],
                         condition: str) -> int:
        """COPY ``rows`` into the session's staging table, then insert those the ``condition``
        tail (``ON CONFLICT ...`` or ``WHERE ...`` over stage alias ``s``) lets through; one
        transaction. Returns the rows inserted."""
        stage = f"_stage_{table.name}"
        cols = ", ".join(table.columns)
        async with conn.transaction():
            await conn.copy_records_to_table(stage, records=rows, columns=table.columns)
            status = await conn.execute(
                f"INSERT INTO {table.name} ({cols}) SELECT {cols} FROM {stage} s {condition}")
        return int(status.rsplit(" ", 1)[1])

    @classmethod
    async def _write_staged(cls, conn: asyncpg.Connection, table: TableSpec,
                            rows: Sequence[tuple]) -> int:
        return await cls._via_stage(conn, table, rows, "ON CONFLICT DO NOTHING")

    @classmethod
    async def insert_absent(cls, conn: asyncpg.Connection, table: TableSpec, rows: Sequence[tuple],
                            also_absent: str = "") -> int:
        """Insert-if-absent ``rows`` on the caller's connection (one whose staging tables this
        writer's pool made) inside the caller's transaction, e.g. with a cursor committed in the
        same transaction (``tickvault history``). ``also_absent``: an SQL condition over the
        staged row ``s`` that must hold too (``NOT EXISTS (...)``), for rows whose natural key
        can differ between sources. Returns the rows inserted."""
        where = f"WHERE {also_absent} " if also_absent else ""
        return await cls._via_stage(conn, table, rows, where + "ON CONFLICT DO NOTHING")

    @classmethod
    async def _write_upsert(cls, conn: asyncpg.Connection, table: TableSpec,
                            rows: Sequence[tuple]) -> int:
        """Rows updated in place (``table.upsert``): the last row per natural key of the batch,
        through the staging table (one statement cannot update a row twice)."""
        key = [table.columns.index(c) for c in table.natural_key]
        last = {tuple(row[i] for i in key): row for row in rows}
        return await cls._via_stage(conn, table, list(last.values()), "ON CONFLICT " + table.upsert)

    @classmethod
    async def _write_absent(cls, conn: asyncpg.Connection, table: TableSpec, rows: Sequence[tuple]) -> int:
        """Append-only rows, skipping those already stored identically (a spool replay)."""
        indexed = ("venue", table.timestamp_columns[0])       # NOT NULL, in the table's index
        match = " AND ".join(
            f"t.{c} = s.{c}" if c in indexed else f"t.{c} IS NOT DISTINCT FROM s.{c}"
            for c in table.columns if c not in _MUTABLE.get(table.name, ()))
        return await cls._via_stage(conn, table, rows,
                                    f"WHERE NOT EXISTS (SELECT 1 FROM {table.name} t WHERE {match})")

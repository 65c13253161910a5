"""Durable local spool: batches the database could not take, kept on disk until it can.

Layout: append-only segment files ``<dir>/segment-<n>.spool``. Each record is one batch::

    magic b"TVS1" | payload length (u32 LE) | CRC-32 of payload (u32 LE) | payload

where payload is MessagePack ``[table_name, [row, ...]]`` (rows exactly as the writer takes them:
tuples with µs-since-epoch integers for timestamps). :meth:`Spool.append` fsyncs the segment (and,
for a new segment, the directory) before it returns, so an appended batch survives a crash or
SIGKILL. Segments roll over at ``segment_bytes``.

Draining (:meth:`Spool.drain`) replays records oldest first through a write callback (the
writer's replay path: insert-if-absent for every table, so replaying a batch twice is harmless)
and deletes each segment once every record in it was written. Within a process a retried drain
resumes after the last record written. A record with a bad magic, length or checksum is never
replayed: the bytes from it up to the next record that checks out (the spool resynchronises on
the next magic whose length and checksum are valid) are moved to
``<dir>/corrupt/<segment>.<from>-<to>`` (byte offsets), logged with that range and counted
(``corrupt_records``, ``corrupt_bytes``); the records after it are replayed.

The spool is bounded by ``max_bytes``: :meth:`append` returns False when the batch does not fit,
and the caller must record what it drops as a gap (never silently). Such gap rows are appended
with ``over_cap=True``: they are always accepted (a few hundred bytes per dropped batch), so a
drop stays on record across a shutdown with the database still down, or a crash, and lands in
``data_gaps`` when the spool is drained.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from collector_daemon.rows import TABLES, TableSpec

log = logging.getLogger(__name__)

MAGIC = b"TVS1"
_HEADER = struct.Struct("<4sII")


class SpoolLockedError(RuntimeError):
    """Another process holds the spool directory."""


class Spool:
    """An append-only, checksummed, fsync'd batch store in one directory.

    One process owns a spool directory at a time (an exclusive ``flock`` on ``<dir>/.lock``).

    Args:
        directory: created if missing; segments left by an earlier process are picked up.
        max_bytes: total size cap of the segments (bytes).
        segment_bytes: size at which a new segment is started (bytes).
    """

    def __init__(self, directory: Path, *, max_bytes: int = 2 * 2**30,
                 segment_bytes: int = 64 * 2**20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.directory / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolLockedError(
                f"spool directory {self.directory} is used by another collector; give each "
                "collector its own TICKVAULT_SPOOL_DIR") from None
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder()
        self._fh = None
        self._current: Path | None = None
        self._drained_to: dict[Path, int] = {}   # segment -> offset already written (this process)
        self._bytes = self._count_bytes()
        self.corrupt_records = 0
        self.corrupt_bytes = 0

    # ------------------------------------------------------------------ state
    def segments(self) -> list[Path]:
        """Segment files, oldest first."""
        return sorted(self.directory.glob("segment-*.spool"), key=lambda p: int(p.stem.split("-")[1]))

    def _count_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.segments())

    @property
    def size_bytes(self) -> int:
        """Bytes currently spooled (kept in memory: cheap, and safe to read from another thread)."""
        return self._bytes

    def __bool__(self) -> bool:
        return self._bytes > 0

    # ------------------------------------------------------------------ append
    def append(self, table: TableSpec, rows: list[tuple], *, over_cap: bool = False) -> bool:
        """Durably append one batch. Returns False (appending nothing) when the cap is reached,
        unless ``over_cap`` (small records that must never be refused: the gap rows of dropped
        batches).

        Raises:
            OSError: the disk refused the write (the caller treats the batch as not spooled).
        """
        payload = self._encoder.encode((table.name, rows))
        record = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        if not over_cap and self._bytes + len(record) > self.max_bytes:
            return False
        try:
            if self._fh is None or self._fh.tell() + len(record) > self.segment_bytes:
                self._roll()
            self._fh.write(record)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError:
            self.close()                      # a torn tail is skipped at drain (resynchronised)
            self._bytes = self._count_bytes()
            raise
        self._bytes += len(record)
        return True

    def _roll(self) -> None:
        self.close()
        existing = self.segments()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        self._current = self.directory / f"segment-{number:08d}.spool"
        self._fh = open(self._current, "ab")
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def release(self) -> None:
        """Close the open segment and give up the directory lock (at shutdown)."""
        self.close()
        self._lock.close()

    def close(self) -> None:
        """Close the open segment (appends reopen a new one)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._current = None

    # ------------------------------------------------------------------ drain
    async def drain(self, write: Callable[[TableSpec, list[tuple]], Awaitable[int]]) -> int:
        """Write every spooled batch, oldest first, deleting segments as they complete.

        ``write`` is awaited per batch; if it raises, draining stops there and the remaining
        records stay spooled (the exception propagates; the next drain in this process resumes
        after the last record written). Corrupt spans are quarantined and skipped. Returns the
        rows written.
        """
        self.close()
        total = 0
        for segment in self.segments():
            data = segment.read_bytes()
            offset = self._drained_to.get(segment, 0)
            while offset < len(data):
                record = self._parse(data, offset)
                if record is None:
                    offset = self._quarantine(segment, data, offset)
                    self._drained_to[segment] = offset
                    continue
                end, table_name, rows = record
                await write(TABLES[table_name], [tuple(r) for r in rows])
                total += len(rows)
                offset = self._drained_to[segment] = end
            segment.unlink()
            self._drained_to.pop(segment, None)
            self._bytes = self._count_bytes()
        return total

    def _parse(self, data: bytes, offset: int) -> tuple[int, str, list] | None:
        if offset + _HEADER.size > len(data):
            return None
        magic, length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if magic != MAGIC or end > len(data) or zlib.crc32(data[start:end]) != crc:
            return None
        try:
            table_name, rows = self._decoder.decode(data[start:end])
        except (msgspec.DecodeError, ValueError, TypeError):
            return None
        if table_name not in TABLES or not isinstance(rows, list):
            return None
        return end, table_name, rows

    def _quarantine(self, segment: Path, data: bytes, offset: int) -> int:
        """Move the corrupt span at ``offset`` (up to the next valid record) aside; returns
        where replay resumes (``len(data)`` when no valid record follows)."""
        resume = data.find(MAGIC, offset + 1)
        while resume != -1 and self._parse(data, resume) is None:
            resume = data.find(MAGIC, resume + 1)
        if resume == -1:
            resume = len(data)
        corrupt = self.directory / "corrupt"
        corrupt.mkdir(exist_ok=True)
        target = corrupt / f"{segment.name}.{offset}-{resume}"
        target.write_bytes(data[offset:resume])
        self.corrupt_records += 1
        self.corrupt_bytes += resume - offset
        log.error("spool: corrupt record in %s at bytes %d..%d (bad magic, length or checksum): "
                  "%d bytes moved to %s and not replayed; %s", segment.name, offset, resume,
                  resume - offset, target, "replay resumes at the next valid record"
                  if resume < len(data) else "nothing valid follows in this segment")
        return resume

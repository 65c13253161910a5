"""Reading bulk files and writing their rows, independent of the exchange.

* :func:`list_sources`: the CSV files of a PATH: one file, every ``*.csv`` of a folder (sorted
  by name), or every ``*.csv`` member of a zip, read from inside the zip without unpacking.
* :func:`read_chunks`: a source as newline-aligned byte chunks with the number of their first
  line, so every row keeps its physical line number (1-based) for error reports.
* :func:`parse_chunk`: a chunk as an Arrow table of strings (pyarrow's CSV reader); rows with
  the wrong number of fields come back apart, with their line numbers.
* :class:`RejectsFile`: bad lines (source, line, reason, text) in a CSV written on first use.
* :class:`TableWriter`: Arrow batches into a table by binary COPY (ADBC), insert-if-absent.
"""

from __future__ import annotations

import csv
import zipfile
from contextlib import AbstractContextManager, contextmanager
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

#: Bytes read per chunk (~100,000 time-and-sales rows of ~43 bytes): bounds memory whatever the
#: file size. With two write connections up to three chunks are in memory at once: 4 MiB keeps
#: the 10M-row import at ~325 MiB peak RSS (8 MiB: ~465 MiB) at the same speed
#: (docs/benchmarks.md, "History import").
CHUNK_BYTES = 4 * 2**20


class SourceError(ValueError):
    """PATH holds no usable CSV file, or a file's layout is not what the importer expects.
    Nothing has been written when this is raised before the first batch."""


@dataclass(frozen=True)
class Source:
    """One CSV file: ``name`` (file name without folders), ``label`` (path shown in reports:
    ``archive.zip:member.csv`` for a zip member), ``size`` (uncompressed bytes) and ``open``
    (a context manager giving a binary stream of its content)."""

    name: str
    label: str
    size: int
    open: Callable[[], AbstractContextManager[IO[bytes]]]


def list_sources(path: str | Path) -> list[Source]:
    """The CSV files of ``path`` (file, folder or ``.zip``), sorted by name.

    Raises:
        SourceError: ``path`` does not exist, or holds no ``.csv`` file.
    """
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".csv")
        out = [Source(f.name, str(f), f.stat().st_size, lambda f=f: f.open("rb")) for f in files]
    elif zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            members = sorted((i for i in zf.infolist()
                              if not i.is_dir() and i.filename.lower().endswith(".csv")),
                             key=lambda i: i.filename)

        def opener(member: str) -> Callable[[], AbstractContextManager[IO[bytes]]]:
            @contextmanager
            def open_member() -> Iterator[IO[bytes]]:
                with zipfile.ZipFile(p) as zf, zf.open(member) as stream:
                    yield stream
            return open_member

        out = [Source(Path(i.filename).name, f"{p}:{i.filename}", i.file_size, opener(i.filename))
               for i in members]
    else:
        out = [Source(p.name, str(p), p.stat().st_size, lambda: p.open("rb"))]
    if not out:
        raise SourceError(f"{p}: no .csv file in it")
    return out


def first_line(source: Source) -> str:
    """The first line of ``source`` (without the line break), '' for an empty file."""
    with source.open() as fh:
        line = fh.readline(1 << 16)
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def read_chunks(stream: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """``(number of the chunk's first line, chunk)``: the stream cut at line breaks into chunks
    of about ``chunk_bytes``; every chunk but the last ends with a line break."""
    line_no, rest = 1, b""
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            break
        data = rest + block
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        chunk, rest = data[:cut + 1], data[cut + 1:]
        yield line_no, chunk
        line_no += chunk.count(b"\n")
    if rest.strip():
        yield line_no, rest


def chunk_lines(chunk: bytes) -> int:
    """Physical lines in a chunk from :func:`read_chunks`."""
    return chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)


@dataclass(frozen=True)
class ParsedChunk:
    """A chunk parsed as strings: ``table`` (one string column per name), ``lines`` (int64 line
    number of each row of ``table``) and ``bad`` (``(line, text)`` of rows with the wrong number
    of fields)."""

    table: pa.Table
    lines: pa.Array
    bad: list[tuple[int, str]]


def parse_chunk(chunk: bytes, first: int, names: list[str]) -> ParsedChunk:
    """Parse one chunk of a headerless CSV whose columns are ``names``, every value as a string
    (the caller validates). An empty line is a row of empty strings (rejected by validation).

    Raises:
        SourceError: the reader's rows and the chunk's lines disagree (a quoted line break).
    """
    bad: list[tuple[int, str]] = []

    def invalid(row: pacsv.InvalidRow) -> str:
        bad.append((first + row.number - 1, row.text))
        return "skip"

    table = pacsv.read_csv(
        pa.py_buffer(chunk),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False,
                                       block_size=len(chunk) + 1),
        parse_options=pacsv.ParseOptions(invalid_row_handler=invalid, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                             strings_can_be_null=False, quoted_strings_can_be_null=False))
    n = chunk_lines(chunk)
    if table.num_rows + len(bad) != n:
        raise SourceError(f"lines {first}-{first + n - 1}: {table.num_rows + len(bad)} rows in "
                          f"{n} lines (quoted line breaks are not Kraken's format)")
    if bad:
        skip = pa.array([b for b, _ in bad], pa.int64())
        all_lines = pa.array(range(first, first + n), pa.int64())
        lines = all_lines.filter(pc.invert(pc.is_in(all_lines, value_set=skip)))
    else:
        lines = pa.array(range(first, first + n), pa.int64())
    return ParsedChunk(table, lines, bad)


class RejectsFile:
    """Bad lines, written as CSV ``source,line,reason,text`` to ``path`` (created on the first
    reject, so a clean import leaves no file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fh: IO[str] | None = None
        self._writer = None

    def add(self, source: str, line: int, reason: str, text: str) -> None:
        """Record one bad line."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(["source", "line", "reason", "text"])
        self._writer.writerow([source, line, reason, text])
        self.count += 1

    def close(self) -> None:
        """Flush and close the file (if any reject was written)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class TableWriter:
    """Arrow batches into one table by binary COPY (ADBC), each batch committed on its own.

    Insert-if-absent on the table's unique key: a batch is first COPYed straight into the table
    (one write, the fast path of a first import); when that hits the key (a re-import, an
    overlap), the batch is rolled back and goes through a temporary staging table +
    ``INSERT ... SELECT ... ON CONFLICT <on_conflict>``, and later batches go that way too.

    Args:
        dsn: libpq connection string.
        table: target table; the batches' column names are its columns.
        on_conflict: SQL after ``ON CONFLICT`` (``DO NOTHING``, or a ``(key) DO UPDATE ...``).
    """

    def __init__(self, dsn: str, table: str, on_conflict: str = "DO NOTHING") -> None:
        self._conn = adbc.connect(dsn)
        self._table = table
        self._on_conflict = on_conflict
        self._staged = False

    def write(self, batch: pa.Table) -> int:
        """Write ``batch``; returns the rows inserted (the rest were already present).

        Raises:
            adbc_driver_manager.Error: the database refused the rows for another reason.
        """
        if batch.num_rows == 0:
            return 0
        cur = self._conn.cursor()
        try:
            if not self._staged:
                try:
                    cur.adbc_ingest(self._table, batch, mode="append")
                    self._conn.commit()
                    return batch.num_rows
                except adbc.IntegrityError:
                    self._conn.rollback()
                    self._staged = True
            stage = f"_tv_stage_{self._table}"
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
                        f"(LIKE {self._table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            cur.adbc_ingest(stage, batch, mode="append", temporary=True)
            cols = ", ".join(batch.column_names)
            cur.execute(f"WITH ins AS (INSERT INTO {self._table} ({cols}) SELECT {cols} FROM {stage} "
                        f"ON CONFLICT {self._on_conflict} RETURNING 1) SELECT count(*) FROM ins")
            inserted = cur.fetchone()[0]
            self._conn.commit()
            return int(inserted)
        except BaseException:
            self._conn.rollback()
            raise
        finally:
            cur.close()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

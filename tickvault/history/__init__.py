"""Bulk imports of history that exchanges publish as downloadable files.

* :mod:`tickvault.history.sources`: the files of a PATH (a CSV file, a folder or a zip read in
  place), newline-aligned chunks of them with their line numbers, the rejects file, the
  insert-if-absent COPY writer.
* :mod:`tickvault.history.kraken_csv`: Kraken's OHLCVT and time-and-sales CSV files into
  ``exchange_candles`` and ``trades``.

:func:`run_import` is the one entry point of the CLI (``tickvault import <importer> PATH``) and
the Dagster asset ``history_import``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

#: Importer names (``tickvault import <name>``), what each reads and where it writes.
IMPORTERS: dict[str, str] = {
    "kraken-ohlcvt": "Kraken OHLCVT CSV files -> exchange_candles",
    "kraken-trades": "Kraken time-and-sales CSV files -> trades",
}


def run_import(importer: str, dsn: str, path: str | Path, *, symbol: str | None = None,
               interval: int | None = None, columns: list[str] | None = None,
               rejects_path: Path | None = None,
               on_progress: Callable[[int, int, int], None] | None = None,
               connections: int | None = None):
    """Run importer ``importer`` (a key of :data:`IMPORTERS`) on ``path``; returns its
    :class:`~tickvault.history.kraken_csv.ImportSummary`. ``connections``: database connections
    writing concurrently (default :data:`~tickvault.history.kraken_csv.WRITE_CONNECTIONS`).

    Raises:
        ValueError: unknown importer, an interval for an importer without intervals, or what
            the importer raises for bad input (:class:`~tickvault.history.sources.SourceError`).
    """
    from tickvault.history import kraken_csv
    if importer not in IMPORTERS:
        raise ValueError(f"unknown importer {importer!r}; known: {', '.join(IMPORTERS)}")
    common = {"symbol": symbol, "columns": columns, "rejects_path": rejects_path,
              "on_progress": on_progress,
              "connections": connections or kraken_csv.WRITE_CONNECTIONS}
    if importer == "kraken-ohlcvt":
        return kraken_csv.import_ohlcvt(dsn, path, interval=interval, **common)
    if interval is not None:
        raise ValueError(f"{importer} takes no interval")
    return kraken_csv.import_trades(dsn, path, **common)

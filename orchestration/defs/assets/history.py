"""Bulk imports of exchanges' history files (``tickvault.history``): one run per import, named
by its run config, with the import's summary as the materialisation's metadata."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from orchestration.resources import DatabaseResource
from tickvault.history import IMPORTERS, run_import

HISTORY_GROUP = "history"


class HistoryImportConfig(dg.Config):
    """Which file to import and how (the options of ``tickvault import``)."""

    importer: str = Field(description=f"One of: {', '.join(IMPORTERS)}.")
    path: str = Field(description="A CSV file, a folder of them or a zip, on the code server's disk.")
    symbol: str | None = Field(None, description="WS v2 symbol, e.g. ETH/USD; empty = from the file names.")
    interval: int | None = Field(None, description="Candle minutes (OHLCVT); empty = from the file names.")
    columns: list[str] | None = Field(None, description="The files' columns when they have neither "
                                                        "the classic layout nor a header.")
    rejects_path: str | None = Field(None, description="File for rejected lines; empty = "
                                                       "./tickvault-rejects-<importer>-<UTC>.csv.")


@dg.asset(
    group_name=HISTORY_GROUP,
    kinds={"sql", "timescaledb"},
    owners=["team:tickvault"],
    metadata={"tables": "trades, exchange_candles", "importers": ", ".join(IMPORTERS)},
)
def history_import(context: dg.AssetExecutionContext, config: HistoryImportConfig,
                   database: DatabaseResource) -> dg.MaterializeResult:
    """Bulk import of an exchange's downloadable history files (run config names the file)."""
    summary = run_import(config.importer, database.url, config.path, symbol=config.symbol,
                         interval=config.interval, columns=config.columns,
                         rejects_path=Path(config.rejects_path) if config.rejects_path else None)
    context.log.info(summary.line())
    return dg.MaterializeResult(metadata={
        "importer": config.importer,
        "files": summary.files,
        "symbols": sorted(summary.symbols),
        "rows_read": summary.rows_read,
        "inserted": summary.inserted,
        "already_present": summary.already_present,
        "rejected": summary.rejected,
        "rejects_file": str(summary.rejects_path) if summary.rejects_path else "",
        "seconds": round(summary.seconds, 3),
        "summary": summary.line(),
    })

"""``tickvault import ...``, ``tickvault history ...`` and ``tickvault query ...``: the history
subcommands, added to the
``tickvault`` parser by ``collector_daemon.cli``.

Exit codes: 0 success (also when lines were rejected: they are in the rejects file), 1 the
database failed, 2 bad usage or input (the message says what; nothing was written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tickvault.history import IMPORTERS


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``import`` and ``query`` to the ``tickvault`` subparsers."""
    imp = sub.add_parser("import", help="bulk-import an exchange's downloadable files")
    kinds = imp.add_subparsers(dest="import_kind", required=True)
    for kind, what in IMPORTERS.items():
        p = kinds.add_parser(kind, help=what, description=what)
        p.add_argument("path", type=Path, help="a CSV file, a folder of them or Kraken's zip")
        p.add_argument("--symbol", help="WS v2 symbol, e.g. ETH/USD (default: from the file name)")
        if kind == "kraken-ohlcvt":
            p.add_argument("--interval", type=int, help="minutes, e.g. 1440 (default: from the file name)")
        p.add_argument("--columns", help="the file's columns, comma-separated, when it has neither "
                                         "Kraken's classic layout nor a header")
        p.add_argument("--rejects", type=Path, help="file for rejected lines "
                                                    "(default ./tickvault-rejects-<kind>-<UTC>.csv)")
        p.add_argument("--connections", type=_positive_int, default=None, metavar="N",
                       help="database connections writing at once (default 2)")

    hist = sub.add_parser("history", help="an exchange's trade history over REST, resumable")
    hist_kinds = hist.add_subparsers(dest="history_kind", required=True)
    p = hist_kinds.add_parser("kraken-trades", help="Kraken REST Trades -> trades (paged by cursor, "
                                                    "resumes from sync_state)")
    p.add_argument("--pair", required=True, help="WS v2 symbol, e.g. BTC/USD")
    p.add_argument("--since", required=True,
                   help="UTC start (2016-01-01 or ISO time), or 0 for the pair's first trade")
    p.add_argument("--until", help="UTC end, inclusive (default: now)")

    query = sub.add_parser("query", help="candles, trades or quotes from the database and the archive")
    what = query.add_subparsers(dest="query_kind", required=True)
    for kind in ("candles", "trades", "quotes"):
        p = what.add_parser(kind, help=f"{kind} of one instrument in [start, end) UTC")
        p.add_argument("--venue", required=True)
        p.add_argument("--symbol", required=True, help="instrument_name (Kraken: ETH/USD)")
        if kind == "candles":
            p.add_argument("--interval", required=True, help="1m, 5m, 15m, 30m, 1h, 4h, 12h, 1d, 1w")
        p.add_argument("--start", required=True, help="UTC, inclusive (2016-01-01 or ISO time)")
        p.add_argument("--end", required=True, help="UTC, exclusive")
        p.add_argument("--format", choices=("table", "csv", "parquet"), default=None,
                       help="table on a terminal, csv otherwise (default); parquet needs --output")
        p.add_argument("--output", type=Path, help="write to this file instead of stdout")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run ``import`` or ``query`` (``args.command``)."""
    if args.command == "import":
        return _import(args)
    if args.command == "history":
        return _history(args)
    return _query(args)


def _history(args: argparse.Namespace) -> int:
    import asyncio

    from collector_daemon.settings import load_settings
    from tickvault import query
    from tickvault.history.kraken_rest import KrakenRestError, sync_trades

    def ns(text: str) -> int:
        return 0 if text.strip() == "0" else int(query.parse_time(text).timestamp() * 1e6) * 1000

    try:
        since, until = ns(args.since), (ns(args.until) if args.until else None)
        dsn = load_settings().database_url.get_secret_value()
        summary = asyncio.run(sync_trades(
            dsn, args.pair, since_ns=since, until_ns=until,
            on_page=lambda s: print(s.line(), file=sys.stderr) if sys.stderr.isatty() else None))
    except ValueError as exc:
        print(f"tickvault history: {exc}", file=sys.stderr)
        return 2
    except KrakenRestError as exc:
        print(f"tickvault history: REST failed (the next run resumes from the stored cursor): {exc}",
              file=sys.stderr)
        return 1
    print(summary.line())
    return 0


def _import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from collector_daemon.settings import load_settings
    from tickvault.history import run_import

    dsn = load_settings().database_url.get_secret_value()
    columns = args.columns.split(",") if args.columns else None
    bar = None

    def progress(done: int, total: int, rows: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr,
                       desc=args.import_kind, disable=not sys.stderr.isatty())
        bar.update(done - bar.n)
        bar.set_postfix_str(f"{rows:,} rows, {rows / max(bar.format_dict['elapsed'], 1e-9):,.0f} rows/s",
                            refresh=False)

    try:
        summary = run_import(args.import_kind, dsn, args.path, symbol=args.symbol,
                             interval=getattr(args, "interval", None), columns=columns,
                             rejects_path=args.rejects, on_progress=progress,
                             connections=args.connections)
    except ValueError as exc:   # SourceError too: bad input, nothing written
        print(f"tickvault import: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print(summary.line())
    return 0


def _query(args: argparse.Namespace) -> int:
    from collector_daemon.settings import load_settings
    from tickvault import query

    fmt = args.format or ("table" if sys.stdout.isatty() and args.output is None else "csv")
    if fmt == "parquet" and args.output is None:
        print("tickvault query: --format parquet needs --output PATH", file=sys.stderr)
        return 2
    try:
        start, end = query.parse_time(args.start), query.parse_time(args.end)
        with query.Client.from_env(load_settings().database_url.get_secret_value()) as client:
            if args.query_kind == "candles":
                df = client.candles(args.venue, args.symbol, args.interval, start, end)
            elif args.query_kind == "trades":
                df = client.trades(args.venue, args.symbol, start, end)
            else:
                df = client.quotes(args.venue, args.symbol, start, end)
    except ValueError as exc:
        print(f"tickvault query: {exc}", file=sys.stderr)
        return 2
    if fmt == "parquet":
        df.write_parquet(args.output)
    elif fmt == "csv":
        if args.output is None:
            sys.stdout.write(df.write_csv())
        else:
            df.write_csv(args.output)
    else:
        import polars as pl
        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200):
            text = str(df)
        if args.output is None:
            print(text)
        else:
            args.output.write_text(text + "\n")
    return 0

"""Kraken's downloadable CSV files into the database.

Two kinds of files (../shared/reference/exchange-apis-and-peers.md section C; Kraken support
articles 360047124832 "Downloadable historical OHLCVT data" and 360047543791 "Downloadable
historical market data (time and sales)"):

* **OHLCVT** (``<PAIR>_<minutes>.csv``, e.g. ``ETHUSD_1440.csv``): no header, columns
  ``time,open,high,low,close,volume,trades``; ``time`` = start of the interval, s since the
  epoch (UTC); only intervals with trades are in the file (a missing interval is not a gap).
  Rows go to ``exchange_candles`` (venue ``kraken``, ``closed`` true, ``vwap`` NULL: the files
  have none, ``source`` ``csv``).
* **Time and sales** (``<PAIR>.csv``, e.g. ``XBTUSD.csv``): no header, ``time,price,volume``
  per trade, ``time`` in s since the epoch with a fraction. Newer files are said to add side,
  order type and trade id: a file whose column count is not 3 is refused unless it has a header
  naming its columns or ``columns`` is given; nothing is guessed. Rows go to ``trades``:
  ``amount`` = volume (base currency), ``exchange_ts`` rounded to the µs (the first 7
  fractional digits), ``receive_ts`` = the time of the import, ``source`` ``csv``.

**Trade ids of classic rows.** The classic file has no trade id, so each row gets
``trade_id = 'csv:<exchange_ts µs>:<k>'``, ``k`` = 000000, 000001, ... (zero-padded to 6 digits,
so the text order of the ids is the file order, which candles use for open and close) the row's
position among the file's rows with the same timestamp, in file order (counting every row whose
timestamp is valid), and ``trade_seq`` NULL. The id is deterministic, so a re-import (or an overlapping quarterly file)
finds the rows already present; it contains ':' and Kraken's ids are digits only, so it can never
equal a real id. It requires the file to be in time order: a row whose time is earlier than a
previous row's is rejected (``time goes backwards``). Where a file carries Kraken's id, that id is
``trade_id`` and ``trade_seq`` (ids are sequential per pair). ``direction`` and ``ord_type`` are
NULL when the file does not say them (schema/0012).

**Symbols.** ``instrument_name`` is the WS v2 symbol (``BTC/USD``). From a file name, the pair
code is split at a known quote currency (longest match) and Kraken's asset codes are translated
(``XBT`` -> ``BTC``, ``XDG`` -> ``DOGE``; legacy ``XXBTZUSD`` style codes lose their X/Z
prefixes). A name that does not split needs ``symbol``.

**Behaviour.** The layout of every selected file is checked before anything is written. Files
are read in newline-aligned chunks (memory flat in the file size), parsed by pyarrow, validated
and transformed by polars (no Python loop over rows), and written by binary COPY (ADBC), one
committed batch per chunk, insert-if-absent on the table's key: a re-import inserts 0 rows. A
bad line (wrong field count, unparsable or implausible value) is written to the rejects file with
its line number and reason, and the rest is imported.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa

from collector_daemon.rows import EXCHANGE_CANDLES
from tickvault.history.sources import (
    CHUNK_BYTES,
    RejectsFile,
    Source,
    SourceError,
    TableWriter,
    first_line,
    list_sources,
    parse_chunk,
    read_chunks,
)

VENUE = "kraken"

#: Write connections of an import (each chunk one COPY transaction on one of them). Two: on 2
#: cores the 10M-row benchmark imports ~1.2x faster than with one; a third adds nothing
#: (docs/benchmarks.md, "History import").
WRITE_CONNECTIONS = 2

#: Intervals (minutes) of Kraken's OHLCVT files (support article 360047124832) and of its
#: REST/WS OHLC (also 10080 and 21600).
OHLCVT_INTERVALS: tuple[int, ...] = (1, 5, 15, 30, 60, 240, 720, 1440, 10080, 21600)

#: Quote currencies a pair code is split at (longest first wins): Kraken's spot quote assets.
QUOTE_CODES: tuple[str, ...] = ("USDT", "USDC", "PYUSD", "USD", "EUR", "GBP", "CAD", "JPY",
                                "CHF", "AUD", "AED", "XBT", "ETH", "DAI", "DOT")

#: Kraken asset codes that differ from the WS v2 symbol's (REST /0/public/Assets ``altname``).
ASSET_ALIASES: dict[str, str] = {"XBT": "BTC", "XDG": "DOGE"}

#: Column names accepted in a header or ``columns``, and the field they are.
TRADE_COLUMN_NAMES: dict[str, str] = {
    "time": "time", "timestamp": "time", "unix_ts": "time", "price": "price",
    "volume": "volume", "qty": "volume", "amount": "volume", "side": "side",
    "direction": "side", "ord_type": "ord_type", "order_type": "ord_type", "ordertype": "ord_type",
    "type": "ord_type", "trade_id": "trade_id", "id": "trade_id", "misc": "misc",
}
OHLCVT_COLUMN_NAMES: dict[str, str] = {
    "time": "time", "timestamp": "time", "unix_ts": "time", "open": "open", "high": "high",
    "low": "low", "close": "close", "volume": "volume", "vwap": "vwap", "trades": "trades",
    "count": "trades", "trade_count": "trades",
}
_CLASSIC_TRADES = ("time", "price", "volume")
_CLASSIC_OHLCVT = ("time", "open", "high", "low", "close", "volume", "trades")

_SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,12}/[A-Z0-9]{1,12}$")
_NAME_RE = re.compile(r"^(?P<pair>[A-Za-z0-9]+?)(?:_(?P<interval>\d+))?\.csv$", re.IGNORECASE)
_TIME_RE = r"^\d{1,11}(\.\d+)?$"
#: Plausible trade/candle times: Kraken opened in 2013; nothing after tomorrow.
_EARLIEST_US = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000


def pair_to_symbol(pair: str) -> str | None:
    """Kraken pair code (``XBTUSD``, ``ETHUSDT``, ``XXBTZUSD``) -> WS v2 symbol (``BTC/USD``),
    None when it does not split at a known quote currency."""
    pair = pair.upper()
    legacy = re.fullmatch(r"[XZ]([A-Z]{3})[XZ]([A-Z]{3})", pair)
    if legacy:
        base, quote = legacy.groups()
    else:
        quote = next((q for q in sorted(QUOTE_CODES, key=len, reverse=True)
                      if pair.endswith(q) and len(pair) > len(q)), None)
        if quote is None:
            return None
        base = pair[:-len(quote)]
    return f"{ASSET_ALIASES.get(base, base)}/{ASSET_ALIASES.get(quote, quote)}"


def infer_from_name(name: str) -> tuple[str | None, int | None]:
    """``(symbol, interval minutes)`` from a Kraken file name (``ETHUSD_1440.csv`` ->
    ``("ETH/USD", 1440)``, ``XBTUSD.csv`` -> ``("BTC/USD", None)``); None where it says nothing."""
    m = _NAME_RE.match(name)
    if not m:
        return None, None
    interval = m.group("interval")
    return pair_to_symbol(m.group("pair")), int(interval) if interval else None


def check_symbol(symbol: str) -> str:
    """``symbol`` if it is a WS v2 symbol (``BASE/QUOTE``, upper case).

    Raises:
        ValueError: anything else.
    """
    if not _SYMBOL_RE.match(symbol):
        raise ValueError(f"symbol {symbol!r} is not a Kraken WS v2 symbol like ETH/USD")
    return symbol


@dataclass
class ImportSummary:
    """What an import did. ``inserted`` + ``already_present`` + ``rejected`` = ``rows_read``
    (lines read, header excluded)."""

    kind: str
    files: list[str] = field(default_factory=list)
    symbols: set[str] = field(default_factory=set)
    rows_read: int = 0
    inserted: int = 0
    already_present: int = 0
    rejected: int = 0
    rejects_path: Path | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        text = (f"{self.kind} {', '.join(sorted(self.symbols))}: {len(self.files)} file(s), "
                f"{self.rows_read:,} rows read, {self.inserted:,} inserted, "
                f"{self.already_present:,} already present, {self.rejected:,} rejected "
                f"in {self.seconds:.1f} s ({rate:,.0f} rows/s)")
        if self.rows_read and self.inserted == 0 and self.rejected == 0:
            text += "; nothing new: every row was imported before"
        if self.rejected:
            text += f"; rejected lines in {self.rejects_path}"
        return text


@dataclass(frozen=True)
class _Layout:
    """A file's columns (our field names, in file order) and whether line 1 is a header."""

    fields: tuple[str, ...]
    header: bool


@dataclass(frozen=True)
class _Plan:
    source: Source
    symbol: str
    interval: int | None
    layout: _Layout


def _layout(source: Source, kind: str, columns: list[str] | None) -> _Layout:
    names = OHLCVT_COLUMN_NAMES if kind == "ohlcvt" else TRADE_COLUMN_NAMES
    required = _CLASSIC_OHLCVT if kind == "ohlcvt" else _CLASSIC_TRADES
    classic = _CLASSIC_OHLCVT if kind == "ohlcvt" else _CLASSIC_TRADES
    line = first_line(source)
    if not line.strip():
        raise SourceError(f"{source.label}: the first line is empty")
    cells = [c.strip().strip('"').lower() for c in line.split(",")]
    header = not re.match(r"^\d", cells[0])
    if columns is not None:
        given = [c.strip().lower() for c in columns]
    elif header:
        given = cells
    elif len(cells) == len(classic):
        given = list(classic)
    else:
        raise SourceError(
            f"{source.label}: {len(cells)} columns and no header, but Kraken's "
            f"{'OHLCVT' if kind == 'ohlcvt' else 'time-and-sales'} files have {len(classic)} "
            f"({','.join(classic)}); name the columns with --columns (known: "
            f"{', '.join(sorted(names))}). First line: {line[:120]!r}")
    unknown = [c for c in given if c not in names]
    if unknown:
        raise SourceError(f"{source.label}: unknown column(s) {unknown}; known: {', '.join(sorted(names))}")
    fields = tuple(names[c] for c in given)
    missing = [r for r in required if r not in fields]
    if missing or len(set(fields)) != len(fields):
        raise SourceError(f"{source.label}: columns {list(given)} lack {missing} or repeat one")
    if len(cells) != len(fields):
        raise SourceError(f"{source.label}: the first line has {len(cells)} fields, the columns "
                          f"are {list(given)}: {line[:120]!r}")
    return _Layout(fields, header)


def _plans(path: str | Path, kind: str, symbol: str | None, interval: int | None,
           columns: list[str] | None) -> list[_Plan]:
    """Every file of ``path`` to import with its symbol, interval and checked layout."""
    sources = list_sources(path)
    single = len(sources) == 1
    plans, skipped = [], []
    for src in sources:
        inferred_symbol, inferred_interval = infer_from_name(src.name)
        sym = symbol or inferred_symbol
        ivl = interval or inferred_interval
        if not single and ((symbol and inferred_symbol != symbol)
                           or (interval and inferred_interval != interval)
                           or (kind == "trades" and inferred_interval is not None)
                           or (kind == "ohlcvt" and inferred_interval is None)):
            skipped.append(src.name)
            continue
        if sym is None:
            raise SourceError(f"{src.label}: cannot tell the pair from the file name; give --symbol (e.g. ETH/USD)")
        check_symbol(sym)
        if kind == "ohlcvt":
            if ivl is None:
                raise SourceError(f"{src.label}: cannot tell the interval from the file name; give --interval")
            if ivl not in OHLCVT_INTERVALS:
                raise SourceError(f"{src.label}: interval {ivl} is not one of Kraken's "
                                  f"{', '.join(map(str, OHLCVT_INTERVALS))} minutes")
        plans.append(_Plan(src, sym, ivl if kind == "ohlcvt" else None, _layout(src, kind, columns)))
    if not plans:
        raise SourceError(f"{path}: none of the {len(sources)} CSV file(s) matches "
                          f"(symbol {symbol}, interval {interval}, kind {kind}); e.g. {skipped[:5]}")
    return plans


# ----------------------------------------------------------------------------- validation

def _time_us() -> tuple[pl.Expr, pl.Expr]:
    """(µs since the epoch from the ``time`` string, rounded half up; is the string a time)."""
    t = pl.col("time").str.strip_chars()
    ok = t.str.contains(_TIME_RE)
    # Split at the dot rather than two regex extracts (1/3 less CPU); where ``ok`` is false
    # the value is never used.
    parts = t.str.split_exact(".", 1)
    whole = parts.struct.field("field_0").cast(pl.Int64, strict=False)
    frac = (parts.struct.field("field_1").fill_null("").str.slice(0, 7).str.pad_end(7, "0")
            .cast(pl.Int64, strict=False))
    return whole * 1_000_000 + (frac + 5) // 10, ok


def _number(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars().cast(pl.Float64, strict=False)


def _first_reason(checks: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """The reason of the first failing check (checks are "bad" conditions), null when none."""
    expr = pl.when(checks[0][0]).then(pl.lit(checks[0][1]))
    for cond, reason in checks[1:]:
        expr = expr.when(cond).then(pl.lit(reason))
    return expr.otherwise(pl.lit(None, pl.String))


def _positive(name: str) -> pl.Expr:
    v = pl.col(name)
    return v.is_null() | ~v.is_finite() | (v <= 0)


class _TradeIds:
    """Carries the last timestamp across chunks: ids by position among equal timestamps and
    the time-order check span chunk borders."""

    def __init__(self) -> None:
        self.last_us = -1
        self.run = 0   # rows with last_us seen so far


def _trades_frame(df: pl.DataFrame, plan: _Plan, ids: _TradeIds, receive_us: int,
                  max_us: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows for ``trades``, rejects with line/reason/text) of one parsed chunk."""
    us, ok = _time_us()
    df = df.with_columns(us=us, time_ok=ok & us.is_between(_EARLIEST_US, max_us))
    has_id = "trade_id" in plan.layout.fields
    # Time order (for the positional ids): a valid time earlier than any previous valid time.
    valid_us = pl.when(pl.col("time_ok")).then(pl.col("us"))
    df = df.with_columns(prior=pl.max_horizontal(valid_us.cum_max().shift(1), pl.lit(ids.last_us)))
    df = df.with_columns(backwards=pl.col("time_ok") & (pl.col("us") < pl.col("prior")))
    if not has_id:
        ordered = pl.col("time_ok") & ~pl.col("backwards")
        # The ordered rows' times never decrease, so equal times are one run: k = the row's
        # count among ordered rows minus the count at its run's start (one linear pass, no
        # group-by over the times).
        count = ordered.cum_sum()
        prev_us = pl.when(ordered).then(pl.col("us")).shift(1).forward_fill()
        run_start = ordered & (prev_us.is_null() | (pl.col("us") != prev_us))
        k = count - pl.when(run_start).then(count).forward_fill()
        df = df.with_columns(k=pl.when(ordered).then(
            k.cast(pl.Int64) + pl.when(pl.col("us") == ids.last_us).then(ids.run).otherwise(0)))
        tail = df.filter(ordered).select("us", "k").tail(1)
        if tail.height:
            last_us, last_k = tail.row(0)
            ids.last_us, ids.run = last_us, last_k + 1
    else:
        tail = df.filter(pl.col("time_ok") & ~pl.col("backwards")).select("us").tail(1)
        if tail.height:
            ids.last_us = max(ids.last_us, tail.item())
    cols = {"price": _number("price"), "amount": _number("volume")}
    checks: list[tuple[pl.Expr, str]] = [
        (pl.col("empty"), "empty line"),
        (~pl.col("time").str.strip_chars().str.contains(_TIME_RE), "time is not a Unix time in seconds"),
        (~pl.col("time_ok"), "time out of range (before 2010 or in the future)"),
        (pl.col("backwards") if not has_id else pl.lit(False),
         "time goes backwards (the file must be in time order)"),
        (_positive("price"), "price is not a positive finite number"),
        (_positive("amount"), "volume is not a positive finite number"),
    ]
    if "side" in plan.layout.fields:
        side = pl.col("side").str.strip_chars().str.to_lowercase().replace_strict(
            {"b": "buy", "buy": "buy", "s": "sell", "sell": "sell"}, default=None)
        cols["direction"] = side
        checks.append((pl.col("direction").is_null(), "side is not b/s/buy/sell"))
    else:
        cols["direction"] = pl.lit(None, pl.String)
    if "ord_type" in plan.layout.fields:
        cols["ord_type"] = pl.col("ord_type").str.strip_chars().str.to_lowercase().replace_strict(
            {"m": "market", "market": "market", "l": "limit", "limit": "limit"}, default=None)
        checks.append((pl.col("ord_type").is_null(), "order type is not m/l/market/limit"))
    else:
        cols["ord_type"] = pl.lit(None, pl.String)
    if has_id:
        cols["trade_seq"] = pl.col("trade_id").str.strip_chars().cast(pl.Int64, strict=False)
        checks.append((pl.col("trade_seq").is_null() | (pl.col("trade_seq") < 0),
                       "trade id is not a non-negative integer"))
    df = df.with_columns(**cols)
    df = df.with_columns(reason=_first_reason(checks))
    rejects = df.filter(pl.col("reason").is_not_null())
    good = df.filter(pl.col("reason").is_null())
    trade_id = (pl.col("trade_seq").cast(pl.String) if has_id else
                pl.format("csv:{}:{}", pl.col("us"), pl.col("k").cast(pl.String).str.zfill(6)))
    out = good.select(
        venue=pl.lit(VENUE), instrument_name=pl.lit(plan.symbol), trade_id=trade_id,
        trade_seq=pl.col("trade_seq") if has_id else pl.lit(None, pl.Int64),
        exchange_ts=pl.col("us").cast(pl.Datetime("us", "UTC")),
        receive_ts=pl.lit(receive_us).cast(pl.Datetime("us", "UTC")),
        price=pl.col("price"), amount=pl.col("amount"), direction=pl.col("direction"),
        ord_type=pl.col("ord_type"), source=pl.lit("csv"))
    return out, rejects


def _ohlcvt_frame(df: pl.DataFrame, plan: _Plan, ids: _TradeIds, receive_us: int,
                  max_us: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows for ``exchange_candles``, rejects) of one parsed chunk."""
    us, ok = _time_us()
    width_us = plan.interval * 60_000_000
    df = df.with_columns(us=us, **{c: _number(c) for c in ("open", "high", "low", "close", "volume")},
                         trades_f=_number("trades"),
                         vwap=_number("vwap") if "vwap" in plan.layout.fields else pl.lit(None, pl.Float64))
    checks: list[tuple[pl.Expr, str]] = [
        (pl.col("empty"), "empty line"),
        (~ok, "time is not a Unix time in seconds"),
        (~us.is_between(_EARLIEST_US, max_us), "time out of range (before 2010 or in the future)"),
        ((pl.col("us") % width_us != 0) if plan.interval <= 1440 else pl.lit(False),
         f"time is not the start of a {plan.interval}-minute interval"),
        (_positive("open") | _positive("high") | _positive("low") | _positive("close"),
         "open/high/low/close is not a positive finite number"),
        ((pl.col("high") < pl.max_horizontal("open", "close", "low"))
         | (pl.col("low") > pl.min_horizontal("open", "close")), "high/low do not bound open/close"),
        (pl.col("volume").is_null() | ~pl.col("volume").is_finite() | (pl.col("volume") < 0),
         "volume is not a non-negative finite number"),
        (pl.col("trades_f").is_null() | (pl.col("trades_f") < 0)
         | (pl.col("trades_f") != pl.col("trades_f").floor()), "trades is not a non-negative integer"),
    ]
    df = df.with_columns(reason=_first_reason(checks))
    # Two rows for one interval in a file: the first is kept, the others rejected.
    dup = pl.col("reason").is_null() & pl.col("us").is_duplicated() & (
        pl.int_range(pl.len()).over("us") > 0)
    df = df.with_columns(reason=pl.when(dup).then(pl.lit("interval repeated in the file"))
                         .otherwise(pl.col("reason")))
    rejects = df.filter(pl.col("reason").is_not_null())
    out = df.filter(pl.col("reason").is_null()).select(
        venue=pl.lit(VENUE), instrument_name=pl.lit(plan.symbol),
        interval_minutes=pl.lit(plan.interval, pl.Int32),
        interval_begin=pl.col("us").cast(pl.Datetime("us", "UTC")),
        open=pl.col("open"), high=pl.col("high"), low=pl.col("low"), close=pl.col("close"),
        vwap=pl.col("vwap"), volume=pl.col("volume"), trade_count=pl.col("trades_f").cast(pl.Int32),
        closed=pl.lit(True), source=pl.lit("csv"),
        receive_ts=pl.lit(receive_us).cast(pl.Datetime("us", "UTC")))
    return out, rejects


def _batches(kind: str, plans: list[_Plan], summary: ImportSummary, rejects: RejectsFile,
             receive_us: int, chunk_bytes: int) -> Iterator[tuple[pa.Table, int]]:
    """The import's rows, one Arrow batch per chunk of a file (its columns are the target
    table's), with the chunk's length in bytes. Rejected lines go to ``rejects``; ``summary``'s
    files, symbols, rows read and rejected are counted as the chunks are read."""
    max_us = receive_us + 86_400_000_000
    transform = _ohlcvt_frame if kind == "ohlcvt" else _trades_frame
    for plan in plans:
        summary.files.append(plan.source.label)
        summary.symbols.add(plan.symbol)
        names = list(plan.layout.fields)
        ids = _TradeIds()
        with plan.source.open() as stream:
            for first, chunk in read_chunks(stream, chunk_bytes):
                if plan.layout.header and first == 1:
                    nl = chunk.find(b"\n")
                    chunk, first = (chunk[nl + 1:] if nl >= 0 else b""), 2
                    if not chunk:
                        continue
                parsed = parse_chunk(chunk, first, names)
                empty = pl.all_horizontal([pl.col(n) == "" for n in names])
                df = pl.from_arrow(parsed.table).with_columns(
                    line=pl.Series(parsed.lines), empty=empty)
                rows, bad = transform(df, plan, ids, receive_us, max_us)
                # The rejected lines' text, rebuilt from the raw strings (only for those).
                bad = bad.select("line", "reason").join(
                    df.filter(pl.col("line").is_in(bad["line"].implode())).select(
                        "line", text=pl.when(pl.col("empty")).then(pl.lit(""))
                        .otherwise(pl.concat_str(names, separator=","))),
                    on="line", how="left", maintain_order="left")
                field_count = f"expected {len(names)} fields ({','.join(names)})"
                for line, reason, text in sorted(
                        [(line, field_count, text) for line, text in parsed.bad]
                        + list(bad.select("line", "reason", "text").iter_rows())):
                    rejects.add(plan.source.label, line, reason, text)
                summary.rows_read += parsed.table.num_rows + len(parsed.bad)
                summary.rejected += len(parsed.bad) + bad.height
                yield rows.to_arrow(), len(chunk)


def _writer(dsn: str, kind: str) -> TableWriter:
    return (TableWriter(dsn, "exchange_candles", EXCHANGE_CANDLES.upsert) if kind == "ohlcvt"
            else TableWriter(dsn, "trades"))


def _run(dsn: str, kind: str, plans: list[_Plan], rejects_path: Path | None,
         on_progress: Callable[[int, int, int], None] | None, chunk_bytes: int,
         connections: int) -> ImportSummary:
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections}")
    started = time.monotonic()
    summary = ImportSummary("kraken-ohlcvt" if kind == "ohlcvt" else "kraken-trades")
    receive_us = time.time_ns() // 1000
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    rejects = RejectsFile(rejects_path or Path(f"tickvault-rejects-{summary.kind}-{stamp}.csv"))
    writers: list[TableWriter] = []
    done_bytes, total = 0, sum(p.source.size for p in plans)
    # Up to ``connections`` writes in flight (chunk i on connection i mod n) while the next
    # chunk is parsed (ADBC's COPY and polars release the GIL): the database and the parser
    # overlap. Counts are settled in file order when a write completes.
    pool = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="tickvault-import")
    pending: deque[tuple[Future[int], int, int]] = deque()

    def settle_oldest() -> None:
        nonlocal done_bytes
        future, height, chunk_len = pending.popleft()
        inserted = future.result()
        summary.inserted += inserted
        summary.already_present += height - inserted
        done_bytes += chunk_len
        if on_progress:
            on_progress(done_bytes, total, summary.rows_read)

    try:
        writers.extend(_writer(dsn, kind) for _ in range(connections))
        for i, (batch, chunk_len) in enumerate(
                _batches(kind, plans, summary, rejects, receive_us, chunk_bytes)):
            if len(pending) == connections:
                settle_oldest()          # frees connection i mod n
            pending.append((pool.submit(writers[i % connections].write, batch), batch.num_rows,
                            chunk_len))
        while pending:
            settle_oldest()
    finally:
        pool.shutdown(wait=True)
        for writer in writers:
            writer.close()
        rejects.close()
    summary.rejects_path = rejects.path if rejects.count else None
    summary.seconds = time.monotonic() - started
    return summary


def import_ohlcvt(dsn: str, path: str | Path, *, symbol: str | None = None,
                  interval: int | None = None, columns: list[str] | None = None,
                  rejects_path: Path | None = None,
                  on_progress: Callable[[int, int, int], None] | None = None,
                  chunk_bytes: int = CHUNK_BYTES, connections: int = WRITE_CONNECTIONS) -> ImportSummary:
    """Import Kraken OHLCVT CSV files into ``exchange_candles``.

    Args:
        dsn: database connection string (the schema migrated).
        path: a CSV file, a folder of them, or a zip (e.g. ``Kraken_OHLCVT.zip``), read in place.
            In a folder or zip, only files named ``<PAIR>_<minutes>.csv`` matching ``symbol`` and
            ``interval`` (when given) are imported.
        symbol: WS v2 symbol (``ETH/USD``); default: from each file name.
        interval: minutes (one of :data:`OHLCVT_INTERVALS`); default: from each file name.
        columns: the file's columns when it has neither the classic layout nor a header.
        rejects_path: where bad lines go (default ``./tickvault-rejects-kraken-ohlcvt-<UTC>.csv``,
            created only when a line is rejected).
        on_progress: called after each chunk with (bytes read, bytes in all files, rows read).
        chunk_bytes: bytes of CSV per parsed chunk and committed batch.
        connections: database connections writing chunks concurrently (each chunk is one
            transaction on one of them; the counts are the same).

    Raises:
        SourceError: PATH holds no matching file, a name does not tell the symbol/interval, or a
            file's columns are not as expected (raised before anything is written).
        ValueError: ``symbol`` is not a WS v2 symbol, or ``connections`` < 1.
    """
    plans = _plans(path, "ohlcvt", symbol and check_symbol(symbol), interval, columns)
    return _run(dsn, "ohlcvt", plans, rejects_path, on_progress, chunk_bytes, connections)


def import_trades(dsn: str, path: str | Path, *, symbol: str | None = None,
                  columns: list[str] | None = None, rejects_path: Path | None = None,
                  on_progress: Callable[[int, int, int], None] | None = None,
                  chunk_bytes: int = CHUNK_BYTES, connections: int = WRITE_CONNECTIONS) -> ImportSummary:
    """Import Kraken time-and-sales CSV files into ``trades`` (ids: see the module docstring).

    Args and Raises: as :func:`import_ohlcvt` (no interval; in a folder or zip, only files
    named ``<PAIR>.csv`` are taken).
    """
    plans = _plans(path, "trades", symbol and check_symbol(symbol), None, columns)
    return _run(dsn, "trades", plans, rejects_path, on_progress, chunk_bytes, connections)


__all__ = ["ImportSummary", "OHLCVT_INTERVALS", "SourceError", "check_symbol", "import_ohlcvt",
           "import_trades", "infer_from_name", "pair_to_symbol"]

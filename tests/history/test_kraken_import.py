"""``tickvault import kraken-ohlcvt|kraken-trades`` into a real TimescaleDB, from the real Kraken
files in ../shared (OHLCVT download, REST trades written as time-and-sales rows)."""

from __future__ import annotations

import csv
import zipfile
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest

from collector_daemon.cli import main
from kraken_data import OHLCVT_NAME, OHLCVT_ROWS, real_rest_trades, time_and_sales_lines
from tickvault.history.kraken_csv import import_ohlcvt, import_trades, infer_from_name, pair_to_symbol
from tickvault.history.sources import SourceError


def run_cli(monkeypatch, capsys, dsn: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", dsn)
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def us_of(text: str) -> int:
    """Exact µs of a decimal seconds string, rounded half up at the 7th digit (the importer's rule)."""
    whole, _, frac = text.partition(".")
    frac7 = int((frac + "0000000")[:7])
    return int(whole) * 1_000_000 + (frac7 + 5) // 10


def test_names_tell_symbol_and_interval():
    assert infer_from_name("ETHUSD_1440.csv") == ("ETH/USD", 1440)
    assert infer_from_name("XBTUSD.csv") == ("BTC/USD", None)
    assert infer_from_name("XBTUSDT_5.csv") == ("BTC/USDT", 5)
    assert infer_from_name("XDGEUR_60.csv") == ("DOGE/EUR", 60)
    assert pair_to_symbol("XXBTZUSD") == "BTC/USD"
    assert pair_to_symbol("XETHXXBT") == "ETH/BTC"
    assert pair_to_symbol("NOPE") is None
    assert infer_from_name("kraken_OHLCVT_download.csv")[1] is None


def test_ohlcvt_real_file_imports_once(migrated_db_url, kraken_dir, monkeypatch, capsys, tmp_path):
    path = kraken_dir / OHLCVT_NAME
    rc, out, err = run_cli(monkeypatch, capsys, migrated_db_url, "import", "kraken-ohlcvt", str(path),
                           "--symbol", "BTC/USD", "--interval", "1440")
    assert rc == 0, err
    assert f"{OHLCVT_ROWS:,} rows read, {OHLCVT_ROWS:,} inserted, 0 already present, 0 rejected" in out
    with psycopg.connect(migrated_db_url) as conn:
        n, first, last, closed = conn.execute(
            "SELECT count(*), min(interval_begin), max(interval_begin), bool_and(closed) "
            "FROM exchange_candles WHERE venue = 'kraken' AND instrument_name = 'BTC/USD' "
            "AND interval_minutes = 1440 AND source = 'csv'").fetchone()
        row = conn.execute(
            "SELECT open, high, low, close, volume, trade_count, vwap FROM exchange_candles "
            "WHERE interval_begin = '2013-10-08'").fetchone()
    assert (n, closed) == (OHLCVT_ROWS, True)
    assert first == datetime(2013, 10, 6, tzinfo=UTC) and last == datetime(2023, 12, 31, tzinfo=UTC)
    # the file's third line: 1381190400,123.91,124.19,123.9,124.18,3.9916,4.0
    assert row == (123.91, 124.19, 123.9, 124.18, 3.9916, 4, None)

    rc, out, _ = run_cli(monkeypatch, capsys, migrated_db_url, "import", "kraken-ohlcvt", str(path),
                         "--symbol", "BTC/USD", "--interval", "1440")
    assert rc == 0
    assert f"{OHLCVT_ROWS:,} rows read, 0 inserted, {OHLCVT_ROWS:,} already present, 0 rejected" in out
    assert "nothing new" in out


def test_ohlcvt_without_interval_in_the_name_is_refused(migrated_db_url, kraken_dir, monkeypatch, capsys):
    rc, _, err = run_cli(monkeypatch, capsys, migrated_db_url, "import", "kraken-ohlcvt",
                         str(kraken_dir / OHLCVT_NAME), "--symbol", "BTC/USD")
    assert rc == 2 and "give --interval" in err


def test_rest_ohlc_layout_needs_columns(migrated_db_url, kraken_dir, tmp_path):
    """The REST OHLC rows (8 columns: time,open,high,low,close,vwap,volume,count) are not the
    OHLCVT layout: refused without --columns, imported with them."""
    path = kraken_dir / "kraken_REST_OHLC_XBTUSD_1440_rows_2024-01-01_to_2024-03-20.csv"
    with pytest.raises(SourceError, match="8 columns and no header"):
        import_ohlcvt(migrated_db_url, path, symbol="BTC/USD", interval=1440)
    s = import_ohlcvt(migrated_db_url, path, symbol="BTC/USD", interval=1440,
                      columns="time,open,high,low,close,vwap,volume,count".split(","))
    assert (s.rows_read, s.inserted, s.rejected) == (80, 80, 0)
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute("SELECT vwap, trade_count FROM exchange_candles WHERE interval_begin = "
                            "'2024-01-01'").fetchone() == (43314.3, 19869)


def test_time_and_sales_import(migrated_db_url, kraken_dir, time_and_sales_csv, monkeypatch, capsys):
    trades = real_rest_trades(kraken_dir)
    rc, out, err = run_cli(monkeypatch, capsys, migrated_db_url, "import", "kraken-trades",
                           str(time_and_sales_csv))
    assert rc == 0, err
    assert "kraken-trades BTC/USDT: 1 file(s), 1,000 rows read, 1,000 inserted, 0 already present, 0 rejected" in out
    with psycopg.connect(migrated_db_url) as conn:
        rows = conn.execute(
            "SELECT trade_id, trade_seq, (extract(epoch FROM exchange_ts) * 1e6)::bigint, price, amount, "
            "direction, ord_type, source FROM trades WHERE venue = 'kraken' AND instrument_name = 'BTC/USDT' "
            "ORDER BY exchange_ts, trade_id").fetchall()
    assert len(rows) == 1000
    lines = time_and_sales_lines(trades)
    want = []
    seen: dict[int, int] = {}
    for line in lines:
        t, price, vol = line.split(",")
        us = us_of(t)
        k = seen.get(us, 0)
        seen[us] = k + 1
        want.append((f"csv:{us}:{k:06d}", None, us, float(price), float(vol), None, None, "csv"))
    assert sorted(rows) == sorted(want)
    assert max(seen.values()) > 1  # the real data has trades sharing a timestamp

    rc, out, _ = run_cli(monkeypatch, capsys, migrated_db_url, "import", "kraken-trades",
                         str(time_and_sales_csv), "--connections", "1")
    assert "1,000 rows read, 0 inserted, 1,000 already present, 0 rejected" in out


def test_connections_must_be_positive(migrated_db_url, time_and_sales_csv, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(monkeypatch, capsys, migrated_db_url, "import", "kraken-trades",
                str(time_and_sales_csv), "--connections", "0")
    assert exit_.value.code == 2 and "--connections: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="connections must be at least 1, got 0"):
        import_trades(migrated_db_url, time_and_sales_csv, connections=0)
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 0


def test_three_bad_lines_are_rejected_with_their_line_numbers(migrated_db_url, kraken_dir, tmp_path):
    lines = time_and_sales_lines(real_rest_trades(kraken_dir))[:200]
    lines[9] = "1762795500.5,105000.1"                 # line 10: a field missing
    lines[99] = lines[99].replace(",", ",abc", 1)        # line 100: price not a number
    t, p, _ = lines[149].split(",")
    lines[149] = f"{t},{p},-0.5"                       # line 150: negative volume
    path = tmp_path / "XBTUSD.csv"
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.csv"
    s = import_trades(migrated_db_url, path, rejects_path=rejects)   # one chunk: sorted by line
    assert (s.rows_read, s.inserted, s.already_present, s.rejected) == (200, 197, 0, 3)
    with rejects.open() as fh:
        got = [(int(r["line"]), r["reason"], r["text"]) for r in csv.DictReader(fh)]
    assert [g[0] for g in got] == [10, 100, 150]
    assert got[0][1].startswith("expected 3 fields") and got[0][2] == lines[9]
    assert got[1][1] == "price is not a positive finite number" and got[1][2] == lines[99]
    assert got[2][1] == "volume is not a positive finite number" and got[2][2] == lines[149]
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM trades WHERE instrument_name = 'BTC/USD'").fetchone()[0] == 197
    again = import_trades(migrated_db_url, path, chunk_bytes=4096, rejects_path=tmp_path / "r2.csv")
    assert (again.inserted, again.already_present, again.rejected) == (0, 197, 3)


@pytest.mark.parametrize("connections", [1, 2])
def test_ids_count_equal_times_across_chunk_borders(migrated_db_url, kraken_dir, tmp_path, connections):
    """A trade's k is its place among the ordered rows of its timestamp: a row rejected for its
    price still takes its place, a row going back in time takes none, and runs of equal times
    cut by chunk borders (64-byte chunks: one or two lines each) continue across them; the same
    with two write connections (chunks committed out of order, counts settled in file order)."""
    lines = time_and_sales_lines(real_rest_trades(kraken_dir))[:300]
    times = [us_of(line.split(",")[0]) for line in lines]
    run = next(i for i in range(1, len(times)) if times[i] == times[i - 1])  # 2nd row of a run
    t, _, vol = lines[run].split(",")
    lines[run] = f"{t},abc,{vol}"                                # rejected, still counted in k
    lines.insert(run + 1, lines[0])                              # backwards: rejected, not counted
    path = tmp_path / "XBTUSD.csv"
    path.write_text("\n".join(lines) + "\n")
    want, seen, last = [], {}, -1
    for line in lines:
        t, price, _ = line.split(",")
        us = us_of(t)
        if us < last:
            continue
        last, k = us, seen.get(us, 0)
        seen[us] = k + 1
        if price != "abc":
            want.append(f"csv:{us}:{k:06d}")
    s = import_trades(migrated_db_url, path, chunk_bytes=64, rejects_path=tmp_path / "r.csv",
                      connections=connections)
    assert (s.rows_read, s.inserted, s.rejected) == (301, 299, 2)
    with psycopg.connect(migrated_db_url) as conn:
        got = [r[0] for r in conn.execute("SELECT trade_id FROM trades ORDER BY trade_id").fetchall()]
    assert got == sorted(want) and f"csv:{times[run]}:000001" not in got
    again = import_trades(migrated_db_url, path, rejects_path=tmp_path / "r2.csv")  # one chunk
    assert (again.inserted, again.already_present, again.rejected) == (0, 299, 2)
    again = import_trades(migrated_db_url, path, chunk_bytes=64, rejects_path=tmp_path / "r3.csv",
                          connections=connections)                        # every chunk staged
    assert (again.inserted, again.already_present, again.rejected) == (0, 299, 2)


def test_zip_is_read_in_place(migrated_db_url, kraken_dir, tmp_path):
    """A zip like Kraken's: several pairs and intervals; --symbol/--interval pick members, and
    without them each member's name tells its symbol and interval."""
    ohlcvt = (kraken_dir / OHLCVT_NAME).read_text().splitlines()
    trades = time_and_sales_lines(real_rest_trades(kraken_dir))
    archive = tmp_path / "Kraken_OHLCVT.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Kraken_OHLCVT/XBTUSD_1440.csv", "\n".join(ohlcvt) + "\n")
        zf.writestr("Kraken_OHLCVT/ETHUSD_1440.csv", "\n".join(ohlcvt[:100]) + "\n")
        zf.writestr("Kraken_OHLCVT/ETHUSD_60.csv", "\n".join(ohlcvt[:10]) + "\n")
        zf.writestr("TimeAndSales/ETHUSD.csv", "\n".join(trades[:300]) + "\n")
        zf.writestr("readme.txt", "not a csv")
    s = import_ohlcvt(migrated_db_url, archive, symbol="ETH/USD", interval=1440)
    assert (s.files, s.inserted) == ([f"{archive}:Kraken_OHLCVT/ETHUSD_1440.csv"], 100)
    s = import_ohlcvt(migrated_db_url, archive)
    assert s.symbols == {"BTC/USD", "ETH/USD"} and len(s.files) == 3
    # ETHUSD_60 rows are daily timestamps: aligned to the hour too, so all import
    assert (s.rows_read, s.inserted, s.already_present) == (OHLCVT_ROWS + 110, OHLCVT_ROWS + 10, 100)
    t = import_trades(migrated_db_url, archive)
    assert (t.symbols, t.inserted) == ({"ETH/USD"}, 300)
    assert not (tmp_path / "Kraken_OHLCVT").exists()


def test_extra_columns_are_detected_never_guessed(migrated_db_url, kraken_dir, tmp_path):
    trades = real_rest_trades(kraken_dir)[:50]
    bare = tmp_path / "XBTUSD.csv"
    bare.write_text("".join(f"{t[2]!r},{t[0]},{t[1]},{t[3]},{t[4]},{t[6]}\n" for t in trades))
    with pytest.raises(SourceError, match="6 columns and no header"):
        import_trades(migrated_db_url, bare)
    headed = tmp_path / "headed" / "XBTUSD.csv"
    headed.parent.mkdir()
    headed.write_text("timestamp,price,volume,side,ord_type,trade_id\n" + bare.read_text())
    s = import_trades(migrated_db_url, headed.parent)
    assert (s.rows_read, s.inserted, s.rejected) == (50, 50, 0)
    with psycopg.connect(migrated_db_url) as conn:
        got = conn.execute("SELECT trade_id, trade_seq, direction, ord_type, price FROM trades "
                           "ORDER BY trade_seq").fetchall()
        assert conn.execute("SELECT count(*) FROM exchange_candles").fetchone()[0] == 0
    side = {"b": "buy", "s": "sell"}
    otype = {"m": "market", "l": "limit"}
    assert got == [(str(t[6]), t[6], side[t[3]], otype[t[4]], float(Decimal(t[0]))) for t in trades]


def test_dagster_history_import_asset(migrated_db_url, kraken_dir):
    """The import as a Dagster run: run config names the file, the summary is the metadata."""
    import dagster as dg

    from orchestration.defs.assets.history import history_import
    from orchestration.resources import DatabaseResource

    config = {"importer": "kraken-ohlcvt", "path": str(kraken_dir / OHLCVT_NAME),
              "symbol": "BTC/USD", "interval": 1440}
    for inserted in (OHLCVT_ROWS, 0):
        result = dg.materialize([history_import], resources={"database": DatabaseResource(url=migrated_db_url)},
                                run_config={"ops": {"history_import": {"config": config}}},
                                instance=dg.DagsterInstance.ephemeral())
        assert result.success
        mat = result.asset_materializations_for_node("history_import")[0]
        meta = {k: v.value for k, v in mat.metadata.items()}
        assert (meta["rows_read"], meta["inserted"], meta["rejected"]) == (OHLCVT_ROWS, inserted, 0)
        assert meta["already_present"] == OHLCVT_ROWS - inserted and meta["symbols"] == ["BTC/USD"]

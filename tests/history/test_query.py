"""``tickvault.query`` and ``tickvault query``: the database, the Parquet archive (the real
export into a local directory) and the two stitched across the retention boundary, on the real
Kraken trades imported as time-and-sales rows (2025-11-10 17:23 .. 2025-11-11 00:13 UTC)."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime

import polars as pl
import psycopg
import pytest

from collector_daemon.cli import main
from orchestration.lib.candles import build_candles
from orchestration.lib.export import LocalStore, export_table_day, verify_export
from tickvault import query
from tickvault.history.kraken_csv import import_trades

DAY10, DAY11 = date(2025, 11, 10), date(2025, 11, 11)
START, END = "2025-11-10", "2025-11-12"


@pytest.fixture
def loaded(migrated_db_url, time_and_sales_csv):
    assert import_trades(migrated_db_url, time_and_sales_csv).inserted == 1000
    with psycopg.connect(migrated_db_url) as conn:
        for day in (DAY10, DAY11):
            build_candles(conn, day)
    return migrated_db_url


@pytest.fixture
def archived(loaded, tmp_path):
    """Both days of trades exported and verified into a local archive, then day 10's trades
    dropped from the database (what retention does to a verified day)."""
    store = LocalStore(tmp_path / "export")
    for day in (DAY10, DAY11):
        export_table_day(loaded, store, "tickvault", "trades", day)
        assert all(o.passed for o in verify_export(loaded, store, "trades", day).values())
    with query.Client(loaded) as q:
        before = q.trades("kraken", "BTC/USDT", START, END)
    with psycopg.connect(loaded) as conn:
        dropped = conn.execute("DELETE FROM trades WHERE exchange_ts < '2025-11-11'").rowcount
    assert 0 < dropped < 1000
    return loaded, tmp_path / "export", before, dropped


def test_database_queries(loaded):
    with query.Client(loaded) as q:
        t = q.trades("kraken", "BTC/USDT", START, END)
        c = q.candles("kraken", "BTC/USDT", "1h", START, END)
        day = q.candles("kraken", "BTC/USDT", "1d", datetime(2025, 11, 10, tzinfo=UTC), date(2025, 11, 11))
        last = q.latest("kraken", "BTC/USDT", "trades", n=2)
        names = q.symbols("kraken")
    assert t.height == 1000
    assert t.columns[:10] == ["venue", "instrument_name", "trade_id", "trade_seq", "exchange_ts",
                              "receive_ts", "price", "amount", "direction", "iv"]
    assert t.schema["exchange_ts"] == pl.Datetime("us", "UTC") and t.schema["price"] == pl.Float64
    assert t["exchange_ts"].is_sorted()
    assert t["exchange_ts"].min() == datetime(2025, 11, 10, 17, 23, 53, 971745, tzinfo=UTC)  # 1762795433.9717445
    assert c["trade_count"].sum() == 1000 and c["interval"].unique().to_list() == ["1h"]
    assert "updated_at" not in c.columns
    assert day.height == 1 and day["bucket_start"][0] == datetime(2025, 11, 10, tzinfo=UTC)
    assert last["exchange_ts"].to_list() == t["exchange_ts"].tail(2).reverse().to_list()
    assert names["instrument_name"].to_list() == ["BTC/USDT"]
    with query.Client(loaded) as q:  # end exclusive: nothing at exactly the end
        edge = t["exchange_ts"][500]
        assert q.trades("kraken", "BTC/USDT", START, edge).height == t.filter(pl.col("exchange_ts") < edge).height


def test_archive_and_database_are_stitched(archived):
    dsn, export_dir, before, dropped = archived
    with query.Client(dsn) as q:   # no archive configured: the dropped day cannot be served
        with pytest.raises(ValueError, match="only in the Parquet archive"):
            q.trades("kraken", "BTC/USDT", START, END)
    with query.Client(dsn, archive=export_dir) as q:
        whole = q.trades("kraken", "BTC/USDT", START, END)
        only_archive = q.trades("kraken", "BTC/USDT", "2025-11-10T18:00", "2025-11-10T19:00")
        only_db = q.trades("kraken", "BTC/USDT", "2025-11-11", END)
    assert whole.equals(before)    # same rows, columns, types and order as before the drop
    assert only_archive.height == before.filter(
        (pl.col("exchange_ts") >= datetime(2025, 11, 10, 18, tzinfo=UTC))
        & (pl.col("exchange_ts") < datetime(2025, 11, 10, 19, tzinfo=UTC))).height > 0
    assert only_db.height == 1000 - dropped

    # A trade of the dropped day written again (a late backfill): still once.
    row = before.filter(pl.col("exchange_ts") < datetime(2025, 11, 11, tzinfo=UTC)).head(1)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO trades (venue, instrument_name, trade_id, exchange_ts, receive_ts, price, "
                     "amount, source) VALUES ('kraken', 'BTC/USDT', %s, %s, %s, %s, %s, 'csv')",
                     (row["trade_id"][0], row["exchange_ts"][0], row["receive_ts"][0], row["price"][0],
                      row["amount"][0]))
    with query.Client(dsn, archive=export_dir) as q:
        assert q.trades("kraken", "BTC/USDT", START, END).equals(before)


@pytest.mark.parametrize("bad", ["1d'; DROP TABLE trades; --", "1 day", "1D", "", "1d OR 1=1"])
def test_interval_injection_is_refused(loaded, bad):
    with query.Client(loaded) as q, pytest.raises(ValueError, match="allowed: 1m, 5m, 15m, 30m, 1h, 4h, 12h, 1d, 1w"):
        q.candles("kraken", "BTC/USDT", bad, START, END)


@pytest.mark.parametrize("bad", ["BTC/USDT' OR '1'='1", "x; DROP TABLE trades", "BTC USDT", "", "a" * 65,
                                 "$1", "BTC/USDT\x00"])
def test_symbol_injection_is_refused(loaded, bad):
    with query.Client(loaded) as q:
        with pytest.raises(ValueError, match="invalid symbol"):
            q.trades("kraken", bad, START, END)
        with pytest.raises(ValueError, match="invalid symbol"):
            q.candles("kraken", bad, "1d", START, END)
        assert q.trades("kraken", "BTC/USDT", START, END).height == 1000   # nothing happened


def test_module_functions_use_the_environment(loaded, monkeypatch):
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", loaded)
    assert query.trades("kraken", "BTC/USDT", START, END).height == 1000
    assert query.candles("kraken", "BTC/USDT", "1w", START, END)["trade_count"].to_list() == [1000]
    assert query.quotes("kraken", "BTC/USDT", START, END).height == 0
    assert query.symbols("kraken")["instrument_name"].to_list() == ["BTC/USDT"]
    assert query.latest("kraken", "BTC/USDT")["price"].to_list() == [
        query.trades("kraken", "BTC/USDT", START, END)["price"][-1]]
    monkeypatch.delenv("TICKVAULT_DATABASE_URL")
    with pytest.raises(ValueError, match="TICKVAULT_DATABASE_URL is not set"):
        query.trades("kraken", "BTC/USDT", START, END)


def test_unknown_venue_and_bad_range(loaded):
    with query.Client(loaded) as q:
        with pytest.raises(ValueError, match="unknown venue 'nope'; allowed: bybit, deribit, kraken"):
            q.trades("nope", "BTC/USDT", START, END)
        with pytest.raises(ValueError, match="empty range"):
            q.trades("kraken", "BTC/USDT", END, START)
        with pytest.raises(ValueError, match="invalid time"):
            q.trades("kraken", "BTC/USDT", "yesterday", END)


def test_cli_query(archived, monkeypatch, capsys, tmp_path):
    dsn, export_dir, before, _ = archived
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", dsn)
    monkeypatch.setenv("TICKVAULT_EXPORT_LOCAL_DIR", str(export_dir))
    assert main(["query", "candles", "--venue", "kraken", "--symbol", "BTC/USDT", "--interval", "1d",
                 "--start", START, "--end", END, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    got = pl.read_csv(io.StringIO(out))
    assert got["bucket_start"].to_list() == ["2025-11-10T00:00:00.000000+0000", "2025-11-11T00:00:00.000000+0000"]
    assert got["trade_count"].sum() == 1000

    parquet = tmp_path / "t.parquet"
    assert main(["query", "trades", "--venue", "kraken", "--symbol", "BTC/USDT", "--start", START,
                 "--end", END, "--format", "parquet", "--output", str(parquet)]) == 0
    assert pl.read_parquet(parquet).equals(before)

    assert main(["query", "candles", "--venue", "kraken", "--symbol", "BTC/USDT", "--interval", "1d; --",
                 "--start", START, "--end", END]) == 2
    assert "unknown interval '1d; --'; allowed:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 in server mode on a free loopback port (real HTTP)."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_archive_on_s3(loaded, s3_endpoint, monkeypatch):
    """The export in an S3 bucket (moto over HTTP), the client configured from the same
    TICKVAULT_EXPORT_* / TICKVAULT_S3_* variables as the Dagster export."""
    from orchestration.lib.export import S3Store
    from orchestration.resources import ObjectStorageResource
    env = {"TICKVAULT_DATABASE_URL": loaded, "TICKVAULT_EXPORT_BUCKET": "tv-archive",
           "TICKVAULT_S3_ENDPOINT_URL": s3_endpoint, "TICKVAULT_S3_REGION": "us-east-1",
           "TICKVAULT_S3_ACCESS_KEY_ID": "test", "TICKVAULT_S3_SECRET_ACCESS_KEY": "test"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    res = ObjectStorageResource(bucket="tv-archive", endpoint_url=s3_endpoint, region_name="us-east-1",
                                access_key_id="test", secret_access_key="test")
    res.client().create_bucket(Bucket="tv-archive")
    store = S3Store(res.client(), "tv-archive")
    with query.Client(loaded) as q:
        before = q.candles("kraken", "BTC/USDT", "1m", START, END), q.trades("kraken", "BTC/USDT", START, END)
    for table in ("trades", "candles"):
        for day in (DAY10, DAY11):
            export_table_day(loaded, store, "tickvault", table, day)
            assert all(o.passed for o in verify_export(loaded, store, table, day).values())
    with psycopg.connect(loaded) as conn:
        conn.execute("DELETE FROM trades WHERE exchange_ts < '2025-11-11'")
        conn.execute("DELETE FROM candles WHERE bucket_start < '2025-11-11'")
    with query.Client.from_env() as q:
        after = q.candles("kraken", "BTC/USDT", "1m", START, END), q.trades("kraken", "BTC/USDT", START, END)
    assert after[0].equals(before[0]) and after[1].equals(before[1])

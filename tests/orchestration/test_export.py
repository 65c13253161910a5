"""Parquet export to S3 (moto's server over real HTTP on loopback) and to a local directory.

Data: the 2021-04-05 ticker capture decoded by the collector's protocol, looped and time-shifted
onto 2026-08-17 (plus a re-keyed copy as a second venue and rows on the neighbouring days), and
the real cyri113 BTC trades of 2026-08-17; written with the collector's BatchWriter. The export
is read back with polars, pyarrow and DuckDB and compared with the database row by row.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3
import dagster as dg
import duckdb
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from collector_daemon.rows import QUOTES, TRADES
from orch_data import CAPTURE_0405, CYRI113_CSV, capture_quote_rows, cyri113_trades, trade_rows, write
from orchestration.defs.assets.export import parquet_export
from orchestration.lib import export as ex
from orchestration.resources import DatabaseResource, ObjectStorageResource

pytestmark = pytest.mark.realdata

DAY = date(2026, 8, 17)
BUCKET = "tickvault-export-test"
PREFIX = "tv"
Q_TS = QUOTES.columns.index("exchange_ts")
Q_RECV = QUOTES.columns.index("receive_ts")
Q_VENUE = QUOTES.columns.index("venue")
DAY_US = 86_400_000_000


def _us(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1_000_000


def looped_quotes(capture: Path, day: date, loops: int) -> list[tuple]:
    """The capture's quotes repeated ``loops`` times, spread over ``day`` (each copy shifted by
    a multiple of day/loops), plus one copy re-keyed as venue 'bybit' and one copy on each
    neighbouring day (must not be exported)."""
    rows = capture_quote_rows(capture)
    first = min(r[Q_TS] for r in rows)
    step = DAY_US // loops

    def shifted(r: tuple, shift: int, venue: str | None = None) -> tuple:
        out = list(r)
        out[Q_TS] += shift
        out[Q_RECV] += shift
        if venue:
            out[Q_VENUE] = venue
        return tuple(out)

    out = []
    for k in range(loops):
        out += [shifted(r, _us(day) - first + k * step) for r in rows]
    out += [shifted(r, _us(day) - first + 5 * step + 7, "bybit") for r in rows]
    out += [shifted(r, _us(day) - first - DAY_US + k * step) for k in (0, loops - 1) for r in rows]
    out += [shifted(r, _us(day) - first + DAY_US) for r in rows]
    return out


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 in server mode on a free loopback port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def storage(s3_endpoint, request) -> ObjectStorageResource:
    """A fresh bucket on the moto server, as the Dagster resource sees it."""
    bucket = f"{BUCKET}-{abs(hash(request.node.name)) % 10**8}"
    res = ObjectStorageResource(bucket=bucket, prefix=PREFIX, endpoint_url=s3_endpoint,
                                region_name="us-east-1", access_key_id="test",
                                secret_access_key="test")
    res.client().create_bucket(Bucket=bucket)
    return res


@pytest.fixture
def loaded_db(migrated_db_url, real_data_dir) -> str:
    deribit = real_data_dir / "deribit"
    write(migrated_db_url, QUOTES, looped_quotes(deribit / CAPTURE_0405, DAY, 60))
    write(migrated_db_url, TRADES, trade_rows(cyri113_trades(deribit / CYRI113_CSV)))
    return migrated_db_url


def db_rows(dsn: str, table: str, day: date, order: str) -> list[tuple]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            f"SELECT * FROM {table} WHERE exchange_ts >= %s AND exchange_ts < %s ORDER BY {order}",
            (start, start + timedelta(days=1))).fetchall()


def download(storage: ObjectStorageResource, dest: Path) -> list[str]:
    """Every object of the bucket into ``dest`` (same keys); returns the keys."""
    client = storage.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])]
    for key in keys:
        (dest / key).parent.mkdir(parents=True, exist_ok=True)
        client.download_file(storage.bucket, key, str(dest / key))
    return sorted(keys)


def materialize(table: str, dsn: str, storage: ObjectStorageResource, **config):
    return dg.materialize(
        [parquet_export], partition_key=f"{DAY.isoformat()}|{table}",
        resources={"database": DatabaseResource(url=dsn), "object_storage": storage},
        run_config={"ops": {"parquet_export": {"config": config}}} if config else None,
        instance=dg.DagsterInstance.ephemeral())


def test_export_quotes_to_s3_reads_back_exactly(loaded_db, storage, tmp_path) -> None:
    result = materialize("quotes", loaded_db, storage, chunk_rows=3_000, rows_per_file=8_000)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == set(ex.CHECKS) and all(e.passed for e in checks.values()), checks
    [mat] = result.asset_materializations_for_node("parquet_export")
    expected = db_rows(loaded_db, "quotes", DAY, 'venue, instrument_name COLLATE "C", exchange_ts')
    assert mat.metadata["rows"].value == len(expected) == 60 * 273 + 273
    assert mat.metadata["venues"].value == ["bybit", "deribit"]

    keys = download(storage, tmp_path)
    folder = f"{PREFIX}/venue=deribit/table=quotes/date={DAY.isoformat()}/"
    parts = [k for k in keys if k.startswith(folder) and k.endswith(".parquet")]
    assert len(parts) >= 3  # 16,380 rows, at most 8,000 per file
    assert parts == sorted(f"{folder}part-{n}.parquet" for n in range(len(parts)))
    assert f"{folder}_manifest.json" in keys
    assert f"{PREFIX}/venue=bybit/table=quotes/date={DAY.isoformat()}/part-0.parquet" in keys

    # pyarrow: exact types, metadata, zstd, sorted row groups with statistics.
    pf = pq.ParquetFile(tmp_path / parts[0])
    schema = pf.schema_arrow
    assert schema.names == [c for c in QUOTES.columns if c != "venue"]  # venue is in the path
    assert schema.field("exchange_ts").type == pa.timestamp("us", tz="UTC")
    assert schema.field("best_bid_price").type == pa.float64()
    assert not schema.field("instrument_name").nullable and schema.field("mark_iv").nullable
    assert schema.metadata[b"tickvault.schema_version"] == b"1"
    assert pf.metadata.num_row_groups >= 2
    column = pf.metadata.row_group(0).column(1)
    assert column.compression == "ZSTD" and column.statistics.has_min_max
    assert [c.column_index for c in pf.metadata.row_group(0).sorting_columns] == [0, 1]

    from_arrow = []
    for venue in ("bybit", "deribit"):
        folder = tmp_path / PREFIX / f"venue={venue}" / "table=quotes" / f"date={DAY.isoformat()}"
        manifest = json.loads((folder / "_manifest.json").read_text())
        for f in manifest["files"]:
            from_arrow += [(venue, *r.values())
                           for r in pq.read_table(tmp_path / f["key"]).to_pylist()]
    assert from_arrow == expected  # row by row, in (venue, instrument, time) order

    # polars over the Hive layout (venue/table/date become columns).
    frame = pl.read_parquet(str(tmp_path / PREFIX / "**" / "*.parquet"), hive_partitioning=True)
    assert frame.schema["exchange_ts"] == pl.Datetime("us", "UTC")
    frame = frame.select(QUOTES.columns).sort(["venue", "instrument_name", "exchange_ts"])
    assert [tuple(r) for r in frame.iter_rows()] == expected

    # DuckDB, as in docs/export.md.
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    got = con.execute(
        f"SELECT {', '.join(QUOTES.columns)} FROM read_parquet('{tmp_path / PREFIX}/**/*.parquet', "
        "hive_partitioning = true) WHERE \"table\" = 'quotes' "
        "ORDER BY venue, instrument_name, exchange_ts").fetchall()
    assert len(got) == len(expected) and got[0][:2] == expected[0][:2]

    with psycopg.connect(loaded_db) as conn:
        rows = conn.execute("SELECT venue, rows, source_rows, verified_at IS NOT NULL, object_keys "
                            "FROM export_manifest WHERE table_name = 'quotes' ORDER BY venue").fetchall()
    assert [(v, n, s, ok) for v, n, s, ok, _ in rows] == [
        ("bybit", 273, 273, True), ("deribit", 60 * 273, 60 * 273, True)]
    assert rows[1][4] == [p for p in parts]


def test_polars_reads_straight_from_s3(loaded_db, storage) -> None:
    assert materialize("trades", loaded_db, storage).success
    options = {"aws_endpoint_url": storage.endpoint_url, "aws_region": "us-east-1",
               "aws_access_key_id": "test", "aws_secret_access_key": "test", "aws_allow_http": "true"}
    frame = pl.read_parquet(
        f"s3://{storage.bucket}/{PREFIX}/venue=deribit/table=trades/date={DAY.isoformat()}/*.parquet",
        storage_options=options, hive_partitioning=True)
    expected = db_rows(loaded_db, "trades", DAY, 'instrument_name COLLATE "C", exchange_ts, trade_id')
    assert [tuple(r) for r in frame.select(TRADES.columns).iter_rows()] == expected  # file order
    assert len(expected) == 9_298


def test_local_directory_when_no_bucket(loaded_db, tmp_path) -> None:
    storage = ObjectStorageResource(bucket=None, prefix=PREFIX, local_dir=str(tmp_path))
    result = materialize("trades", loaded_db, storage, chunk_rows=2_000)
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    folder = tmp_path / PREFIX / "venue=deribit" / "table=trades" / f"date={DAY.isoformat()}"
    assert sorted(p.name for p in folder.iterdir()) == ["_manifest.json", "part-0.parquet"]
    table = pq.read_table(folder / "part-0.parquet")
    assert table.num_rows == 9_298 and pq.ParquetFile(folder / "part-0.parquet").metadata.num_row_groups >= 3
    expected = db_rows(loaded_db, "trades", DAY, 'instrument_name COLLATE "C", exchange_ts, trade_id')
    assert [("deribit", *r.values()) for r in table.to_pylist()] == expected


def test_missing_table_and_unfinished_day(loaded_db, tmp_path) -> None:
    store = ex.LocalStore(tmp_path)
    assert ex.export_table_day(loaded_db, store, PREFIX, "no_such_table", DAY) is None
    with psycopg.connect(loaded_db) as conn:
        conn.execute("DROP TABLE candles")
    storage = ObjectStorageResource(bucket=None, prefix=PREFIX, local_dir=str(tmp_path))
    result = materialize("candles", loaded_db, storage)
    assert result.success and result.asset_materializations_for_node("parquet_export") == []
    with pytest.raises(ex.ExportError, match="has not ended"):
        ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY,
                            now=datetime(2026, 8, 17, 23, 59, tzinfo=UTC))


class _FailAfter:
    """boto3 event hook: raises on the n-th upload request of a Parquet object."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def __call__(self, params, **_) -> None:
        if params.get("Key", "").endswith(".parquet"):
            self.seen += 1
            if self.seen == self.n:
                raise ConnectionError("injected: network down halfway through the upload")


def test_reexport_is_idempotent_and_a_failed_upload_changes_nothing(loaded_db, storage,
                                                                    monkeypatch) -> None:
    # Small multipart parts so every file is a multipart upload (moto's 5 MiB floor lowered).
    import moto.s3.models
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024)
    client = boto3.client("s3", endpoint_url=storage.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test",
                          config=Config(retries={"max_attempts": 1}))
    store = ex.S3Store(client, storage.bucket)
    settings = ex.ExportSettings(chunk_rows=3_000, rows_per_file=6_000, part_bytes=4096)
    folder = f"{PREFIX}/venue=deribit/table=quotes/date={DAY.isoformat()}/"

    def listing() -> list[str]:
        return sorted(store.list_keys(folder))

    def manifest() -> dict:
        return json.loads(store.get_bytes(folder + "_manifest.json"))

    [first] = [e for e in ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
               if e.venue == "deribit"]
    assert all(f.etag.endswith('"') and "-" in f.etag for f in first.files)  # multipart ETags
    assert all(o.passed for o in ex.verify_export(loaded_db, store, "quotes", DAY).values())

    [second] = [e for e in ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
                if e.venue == "deribit"]
    assert second.export_id != first.export_id and manifest()["export_id"] == second.export_id
    assert [f.sha256 for f in second.files] == [f.sha256 for f in first.files]  # same bytes
    assert [f.rows for f in second.files] == [f.rows for f in first.files]
    n = len(first.files)
    assert [f.key for f in second.files] == [f"{folder}part-{i}.parquet" for i in range(n, 2 * n)]
    assert listing() == sorted([f.key for f in second.files] + [folder + "_manifest.json"])
    assert all(o.passed for o in ex.verify_export(loaded_db, store, "quotes", DAY).values())

    before, manifest_before = listing(), manifest()
    hook = _FailAfter(4)  # a few parts into the first file of this export
    client.meta.events.register("before-parameter-build.s3.UploadPart", hook)
    client.meta.events.register("before-parameter-build.s3.PutObject", hook)
    with pytest.raises(ConnectionError, match="injected"):
        ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
    client.meta.events.unregister("before-parameter-build.s3.UploadPart", hook)
    client.meta.events.unregister("before-parameter-build.s3.PutObject", hook)
    assert listing() == before and manifest() == manifest_before
    assert client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []
    outcomes = ex.verify_export(loaded_db, store, "quotes", DAY)
    assert all(o.passed for o in outcomes.values()), outcomes


def test_checks_fail_on_a_late_row_and_a_tampered_object(loaded_db, tmp_path,
                                                         real_data_dir) -> None:
    store = ex.LocalStore(tmp_path)
    [export] = ex.export_table_day(loaded_db, store, PREFIX, "trades", DAY)
    assert all(o.passed for o in ex.verify_export(loaded_db, store, "trades", DAY).values())
    late = list(trade_rows(cyri113_trades(real_data_dir / "deribit" / CYRI113_CSV))[-1])
    late[TRADES.columns.index("trade_id")] = "late-backfill-1"
    write(loaded_db, TRADES, [tuple(late)])
    outcomes = ex.verify_export(loaded_db, store, "trades", DAY)
    assert not outcomes["row_count"].passed and outcomes["objects"].passed
    path = tmp_path / export.files[0].key
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    outcomes = ex.verify_export(loaded_db, store, "trades", DAY)
    assert not outcomes["objects"].passed
    with psycopg.connect(loaded_db) as conn:
        assert conn.execute("SELECT verified_at FROM export_manifest "
                            "WHERE table_name = 'trades'").fetchone()[0] is None


def test_nightly_schedule_exports_yesterday_at_0030_utc(monkeypatch) -> None:
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", "postgresql://localhost/unused")
    from orchestration.definitions import defs as build

    defs = build()
    schedule = defs.resolve_schedule_def("nightly_export_schedule")
    assert schedule.cron_schedule == "30 0 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "nightly_export_job"
    with dg.build_schedule_context(scheduled_execution_time=datetime(2026, 3, 1, 0, 30, tzinfo=UTC),
                                   repository_def=defs.get_repository_def()) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == [
        dg.MultiPartitionKey({"date": "2026-02-28", "table": t}) for t in ex.EXPORT_TABLES]
    retention = defs.resolve_schedule_def("daily_retention_schedule")
    assert retention.default_status == dg.DefaultScheduleStatus.RUNNING


def test_s3_range_reader_reads_a_footer(storage) -> None:
    store = ex.S3Store(storage.client(), storage.bucket)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": list(range(1000))}), buffer)
    store.put_bytes("t/x.parquet", buffer.getvalue())
    head = store.head("t/x.parquet")
    with store.open("t/x.parquet", head.size) as fh:
        assert pq.ParquetFile(fh).read().column("x").to_pylist() == list(range(1000))
    assert store.head("t/none.parquet") is None and store.get_bytes("t/none") is None

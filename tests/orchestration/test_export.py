"""Parquet export to S3 (moto's server over real HTTP on loopback) and to a local directory.

Data: the 2021-04-05 ticker capture decoded by the collector's protocol, looped and time-shifted
onto 2026-08-17 (plus a re-keyed copy as a second venue and rows on the neighbouring days), and
the real cyri113 BTC trades of 2026-08-17; written with the collector's BatchWriter (candles are
built from those trades by the candles library). The export is read back with polars, pyarrow
and DuckDB and compared with the database row by row.
"""

from __future__ import annotations

import hashlib
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
from orchestration.lib.candles import build_candles
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
def storage(s3_endpoint, request, tmp_path) -> ObjectStorageResource:
    """A fresh bucket on the moto server, as the Dagster resource sees it (its local_dir, where
    the spill files go by default, in the test's temp dir)."""
    bucket = f"{BUCKET}-{abs(hash(request.node.name)) % 10**8}"
    res = ObjectStorageResource(bucket=bucket, prefix=PREFIX, endpoint_url=s3_endpoint,
                                region_name="us-east-1", access_key_id="test",
                                secret_access_key="test", local_dir=str(tmp_path / "local"))
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
    started = datetime.now(UTC)
    result = materialize("quotes", loaded_db, storage, chunk_rows=3_000, rows_per_file=8_000)
    finished = datetime.now(UTC)
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

    # _manifest.json: every field against the objects and the database.
    with psycopg.connect(loaded_db) as conn:
        recorded = {m.venue: m for m in ex.manifest_rows(conn, "quotes", DAY)}
    from_arrow = []
    for venue in ("bybit", "deribit"):
        folder = tmp_path / PREFIX / f"venue={venue}" / "table=quotes" / f"date={DAY.isoformat()}"
        manifest = json.loads((folder / "_manifest.json").read_text())
        db_count = sum(1 for r in expected if r[0] == venue)
        assert (manifest["format"], manifest["schema_version"], manifest["venue"],
                manifest["table"], manifest["date"]) == (
            "tickvault-parquet-export", 1, venue, "quotes", DAY.isoformat())
        assert manifest["source_rows"] == manifest["rows"] == db_count == recorded[venue].rows
        assert manifest["export_id"] == recorded[venue].export_id
        assert started <= datetime.fromisoformat(manifest["exported_at"]) <= finished
        assert datetime.fromisoformat(manifest["exported_at"]) == recorded[venue].exported_at
        assert manifest["sort_key"] == ["instrument_name", "exchange_ts"]
        assert [c["name"] for c in manifest["columns"]] == schema.names
        assert manifest["columns"][1] == {"name": "exchange_ts", "type": "timestamp[us, tz=UTC]",
                                          "nullable": False}
        assert [f["key"] for f in manifest["files"]] == recorded[venue].object_keys
        for f in manifest["files"]:
            data = (tmp_path / f["key"]).read_bytes()
            assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
            assert f["rows"] == pq.ParquetFile(tmp_path / f["key"]).metadata.num_rows
            assert f["etag"] == storage.client().head_object(Bucket=storage.bucket,
                                                             Key=f["key"])["ETag"]
        assert manifest["rows"] == sum(f["rows"] for f in manifest["files"])
        assert manifest["bytes"] == sum(f["bytes"] for f in manifest["files"])
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


class _NetworkFailure:
    """boto3 event hooks: the upload of the ``nth`` Parquet file (1-based) of ``folder`` fails at
    its second request (a few parts in: the files before it were committed, since a file's
    first request is sent only once the previous file's upload completed). With
    ``deletes_fail``, every DeleteObjects fails from then on too: the run cannot clean up."""

    EVENTS = ("UploadPart", "PutObject", "DeleteObjects")

    def __init__(self, client, folder: str, nth: int, deletes_fail: bool = False) -> None:
        self.client, self.folder, self.nth, self.deletes_fail = client, folder, nth, deletes_fail
        self.keys: list[str] = []  # the folder's Parquet keys, in upload order
        self.requests = 0
        self.tripped = False

    def __call__(self, params, model, **_) -> None:
        key = params.get("Key", "")
        if model.name == "DeleteObjects":
            if self.tripped and self.deletes_fail:
                raise ConnectionError("injected: network down, cannot delete")
            return
        if not (key.startswith(self.folder) and key.endswith(".parquet")):
            return
        if key not in self.keys:
            self.keys.append(key)
            self.requests = 0
        self.requests += 1
        if len(self.keys) == self.nth and self.requests == 2:
            self.tripped = True
            raise ConnectionError("injected: network down halfway through the upload")

    def __enter__(self) -> _NetworkFailure:
        for event in self.EVENTS:
            self.client.meta.events.register(f"before-parameter-build.s3.{event}", self)
        return self

    def __exit__(self, *_) -> None:
        for event in self.EVENTS:
            self.client.meta.events.unregister(f"before-parameter-build.s3.{event}", self)


def test_reexport_is_idempotent_and_a_failed_upload_changes_nothing(loaded_db, storage,
                                                                    monkeypatch) -> None:
    # Small multipart parts so every file is a multipart upload (moto's 5 MiB floor lowered).
    import moto.s3.models
    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024)
    client = boto3.client("s3", endpoint_url=storage.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test",
                          config=Config(retries={"max_attempts": 1}))
    store = ex.S3Store(client, storage.bucket)
    # deribit: 16,380 rows of 10 instruments in 4 files of at most 6,000 rows.
    settings = ex.ExportSettings(chunk_rows=3_000, rows_per_file=6_000, part_bytes=4096)
    folders = [ex.partition_prefix(PREFIX, v, "quotes", DAY) for v in ("bybit", "deribit")]
    folder = folders[1]  # the partition under test; bybit (1 file) is uploaded before it

    def listing() -> dict[str, list[str]]:
        return {f: sorted(store.list_keys(f)) for f in folders}

    def manifests() -> dict[str, dict]:
        return {f: ex.stored_manifest(store, f) for f in folders}

    def in_force(expected: dict[str, dict]) -> None:
        """Every venue's previous manifest is in force (store and database) and verifies; the
        objects it names are exactly the ones it named before."""
        assert manifests() == expected
        with psycopg.connect(loaded_db) as conn:
            recorded = {m.manifest_key: m for m in ex.manifest_rows(conn, "quotes", DAY)}
        for f, m in expected.items():
            assert recorded[f + "_manifest.json"].export_id == m["export_id"]
            assert recorded[f + "_manifest.json"].object_keys == [x["key"] for x in m["files"]]
        outcomes = ex.verify_export(loaded_db, store, "quotes", DAY)
        assert all(o.passed for o in outcomes.values()), outcomes
        assert client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []) == []

    [first] = [e for e in ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
               if e.venue == "deribit"]
    assert len(first.files) == 4 and sum(f.rows for f in first.files) == 60 * 273
    assert all(f.etag.endswith('"') and "-" in f.etag for f in first.files)  # multipart ETags
    assert all(o.passed for o in ex.verify_export(loaded_db, store, "quotes", DAY).values())

    [second] = [e for e in ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
                if e.venue == "deribit"]
    assert second.export_id != first.export_id
    assert manifests()[folder]["export_id"] == second.export_id
    assert [f.sha256 for f in second.files] == [f.sha256 for f in first.files]  # same bytes
    assert [f.rows for f in second.files] == [f.rows for f in first.files]
    assert [f.key for f in second.files] == [f"{folder}part-{i}.parquet" for i in range(4, 8)]
    assert listing()[folder] == sorted([f.key for f in second.files] + [folder + "_manifest.json"])
    assert all(o.passed for o in ex.verify_export(loaded_db, store, "quotes", DAY).values())
    before, manifests_before = listing(), manifests()

    # The network fails during deribit's 2nd file: bybit's file and deribit's 1st are committed
    # by then; the run deletes them and every venue keeps its previous export.
    with _NetworkFailure(client, folder, nth=2) as failure, \
            pytest.raises(ConnectionError, match="injected"):
        ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
    assert failure.keys == [f"{folder}part-8.parquet", f"{folder}part-9.parquet"]
    assert listing() == before
    in_force(manifests_before)

    # Same, and the cleanup fails too: the committed files stay as orphans, named by no
    # manifest; the previous exports stay in force.
    with _NetworkFailure(client, folder, nth=2, deletes_fail=True) as failure, \
            pytest.raises(ConnectionError, match="halfway") as raised:
        ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
    assert failure.keys == [f"{folder}part-8.parquet", f"{folder}part-9.parquet"]
    assert any("left in place" in note for note in raised.value.__notes__)
    orphans = {f: sorted(set(keys) - set(before[f])) for f, keys in listing().items()}
    assert orphans == {folders[0]: [folders[0] + "part-2.parquet"],
                       folder: [folder + "part-8.parquet"]}
    for f, keys in orphans.items():
        assert store.head(keys[0]).size > 0  # committed, not a half upload
        assert not set(keys) & {x["key"] for x in manifests_before[f]["files"]}
    in_force(manifests_before)

    # The next successful export replaces both partitions and deletes the orphans.
    exports = ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
    assert [[f.key for f in e.files] for e in exports] == [
        [folders[0] + "part-3.parquet"], [f"{folder}part-{i}.parquet" for i in range(9, 13)]]
    assert listing() == {e.manifest_key.removesuffix("_manifest.json"):
                         sorted([f.key for f in e.files] + [e.manifest_key]) for e in exports}
    assert all(o.passed for o in ex.verify_export(loaded_db, store, "quotes", DAY).values())


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


def test_reexport_refuses_to_replace_a_partition_with_fewer_rows(loaded_db, tmp_path,
                                                                 real_data_dir) -> None:
    """Retention dropped the day, a backfill wrote a few rows of it again: re-exporting must not
    replace the archived partition with those few rows."""
    store = ex.LocalStore(tmp_path)
    exports = ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY)
    assert all(o.passed for o in ex.verify_export(loaded_db, store, "quotes", DAY).values())
    folders = [ex.partition_prefix(PREFIX, e.venue, "quotes", DAY) for e in exports]
    before = {f: {k: store.get_bytes(k) for k in store.list_keys(f)} for f in folders}
    with psycopg.connect(loaded_db) as conn:
        recorded = conn.execute("SELECT * FROM export_manifest ORDER BY venue").fetchall()
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    with psycopg.connect(loaded_db) as conn:
        assert conn.execute("DELETE FROM quotes WHERE venue = 'deribit' AND exchange_ts >= %s "
                            "AND exchange_ts < %s", (start, start + timedelta(days=1))
                            ).rowcount == 60 * 273
    backfill = looped_quotes(real_data_dir / "deribit" / CAPTURE_0405, DAY, 60)[:5]
    assert {r[Q_VENUE] for r in backfill} == {"deribit"}
    assert write(loaded_db, QUOTES, backfill) == 5

    folder = ex.partition_prefix(PREFIX, "deribit", "quotes", DAY)
    with pytest.raises(ex.ExportError) as raised:
        ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY)
    message = str(raised.value)
    assert message.startswith(f"{folder}: refusing to replace the export in force (16380 rows")
    assert "with the 5 rows the database holds now" in message
    # Nothing uploaded or deleted, in either venue's partition; the catalogue is unchanged.
    assert {f: {k: store.get_bytes(k) for k in store.list_keys(f)} for f in folders} == before
    with psycopg.connect(loaded_db) as conn:
        assert conn.execute("SELECT * FROM export_manifest ORDER BY venue").fetchall() == recorded

    # The export_manifest row alone is enough to refuse (the store's manifest lost).
    store.delete([folder + "_manifest.json"])
    with pytest.raises(ex.ExportError, match=r"_manifest.json 0, export_manifest 16380\) with "
                                             r"the 5 rows"):
        ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY)


def test_schema_and_sample_checks_fail_on_a_rewritten_file(loaded_db, tmp_path) -> None:
    """A file whose bytes match the catalogue but whose content is wrong (as a faulty exporter
    would write it): the schema check catches a changed column type, the sample check a
    changed value."""
    store = ex.LocalStore(tmp_path)
    [export] = ex.export_table_day(loaded_db, store, PREFIX, "trades", DAY)
    [part] = export.files
    original = pq.read_table(tmp_path / part.key)
    assert original.num_rows == 9_298

    def replace(table: pa.Table) -> tuple[list[str], dict[str, ex.CheckOutcome]]:
        """Rewrite the object, record its new size and sha256 as the export's, verify with
        every row sampled; returns (failed checks, outcomes)."""
        pq.write_table(table, tmp_path / part.key, compression="zstd")
        data = (tmp_path / part.key).read_bytes()
        with psycopg.connect(loaded_db) as conn:
            conn.execute("UPDATE export_manifest SET object_bytes = %s, object_sha256 = %s, "
                         "verified_at = now() WHERE table_name = 'trades'",
                         ([len(data)], [hashlib.sha256(data).hexdigest()]))
        outcomes = ex.verify_export(loaded_db, store, "trades", DAY, sample_rows=20_000)
        failed = [n for n, o in outcomes.items() if not o.passed]
        with psycopg.connect(loaded_db) as conn:
            verified = conn.execute("SELECT verified_at IS NOT NULL FROM export_manifest "
                                    "WHERE table_name = 'trades'").fetchone()[0]
        assert verified == (not failed)
        return failed, outcomes

    i = original.schema.get_field_index("trade_seq")
    narrowed = original.set_column(i, pa.field("trade_seq", pa.int32()),
                                   original.column(i).cast(pa.int32()))
    failed, outcomes = replace(narrowed)
    assert failed == ["schema"]
    assert outcomes["schema"].failures == [f"{part.key}: schema differs from the declared one"]

    prices = original.column("price").to_pylist()
    prices[4_321] += 0.5
    changed = original.set_column(original.schema.get_field_index("price"),
                                  original.schema.field("price"), pa.array(prices, pa.float64()))
    failed, outcomes = replace(changed)
    assert failed == ["sample"]
    assert outcomes["sample"].failures == ["1 of 9298 sampled rows differ from the database"]
    assert outcomes["sample"].metadata["sampled_rows"] == 9_298

    assert replace(original)[0] == []  # the export's own content again: every check passes


def test_candles_day_exports_and_reads_back(loaded_db, tmp_path) -> None:
    with psycopg.connect(loaded_db) as conn:
        report = build_candles(conn, DAY)
        expected = conn.execute(
            "SELECT * FROM candles WHERE bucket_start >= %s AND bucket_start < %s "
            'ORDER BY instrument_name COLLATE "C", interval COLLATE "C", bucket_start',
            (datetime(2026, 8, 17, tzinfo=UTC), datetime(2026, 8, 18, tzinfo=UTC))).fetchall()
    # 1m..1d and the week starting that Monday (2026-08-17): 317+118+71+50+36+16+10+10+10
    assert report.trades == 9_298 and len(expected) == sum(report.rows.values()) == 638
    busiest = max(sum(1 for r in expected if r[1] == name) for name in {r[1] for r in expected})
    assert busiest > 100  # more than chunk_rows: kept whole, not cut into time slices
    storage = ObjectStorageResource(bucket=None, prefix=PREFIX, local_dir=str(tmp_path))
    result = materialize("candles", loaded_db, storage, chunk_rows=100, rows_per_file=200)
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    [mat] = result.asset_materializations_for_node("parquet_export")
    assert mat.metadata["rows"].value == len(expected)
    assert mat.metadata["venues"].value == ["deribit"]

    folder = tmp_path / PREFIX / "venue=deribit" / "table=candles" / f"date={DAY.isoformat()}"
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["sort_key"] == ["instrument_name", "interval", "bucket_start"]
    assert manifest["rows"] == manifest["source_rows"] == len(expected)
    assert len(manifest["files"]) >= 3
    tables = [pq.read_table(tmp_path / f["key"]) for f in manifest["files"]]
    assert tables[0].schema.field("bucket_start").type == pa.timestamp("us", tz="UTC")
    assert tables[0].schema.field("trade_count").type == pa.int32()
    got = [("deribit", *r.values()) for t in tables for r in t.to_pylist()]
    assert got == expected  # row by row, in (instrument, interval, bucket_start) order


def test_spill_dir_from_run_config_environment_or_local_dir(loaded_db, tmp_path,
                                                            monkeypatch) -> None:
    storage = ObjectStorageResource(bucket=None, prefix=PREFIX, local_dir=str(tmp_path / "out"))

    def spilled_to(**config) -> Path:
        """Run the export; the spill directory it used (created, and empty again after)."""
        result = materialize("trades", loaded_db, storage, **config)
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
        [mat] = result.asset_materializations_for_node("parquet_export")
        assert mat.metadata["rows"].value == 9_298
        path = Path(mat.metadata["spill_dir"].value)
        assert path.is_dir() and list(path.iterdir()) == []
        return path

    monkeypatch.delenv("TICKVAULT_EXPORT_SPILL_DIR", raising=False)
    assert spilled_to() == tmp_path / "out" / ".spill"
    monkeypatch.setenv("TICKVAULT_EXPORT_SPILL_DIR", str(tmp_path / "env" / "spill"))
    assert spilled_to() == tmp_path / "env" / "spill"
    assert spilled_to(spill_dir=str(tmp_path / "config")) == tmp_path / "config"

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TICKVAULT_EXPORT_SPILL_DIR", str(tmp_path / "a-file"))
    with pytest.raises(ex.ExportError, match="TICKVAULT_EXPORT_SPILL_DIR.*cannot be created"):
        materialize("trades", loaded_db, storage)


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


def test_read_passes_do_not_change_the_files(loaded_db, tmp_path) -> None:
    # 1 pass: one unfiltered stream; 3 and 7: filtered passes over instrument ranges, some
    # spanning both venues (bybit's 273 rows, then deribit's 16,380 in ranges of <= 3,000).
    digests = {}
    for passes in (1, 3, 7):
        store = ex.LocalStore(tmp_path / str(passes))
        settings = ex.ExportSettings(chunk_rows=3_000, rows_per_file=6_000, read_passes=passes)
        exports = ex.export_table_day(loaded_db, store, PREFIX, "quotes", DAY, settings)
        digests[passes] = [(e.venue, e.rows, [(f.key, f.rows, f.sha256) for f in e.files])
                           for e in exports]
        assert all(o.passed for o in ex.verify_export(loaded_db, store, "quotes", DAY).values())
    assert digests[1][0][:2] == ("bybit", 273) and digests[1][1][:2] == ("deribit", 60 * 273)
    assert len(digests[1][1][2]) == 4
    assert digests[3] == digests[1] and digests[7] == digests[1]

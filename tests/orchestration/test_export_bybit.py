"""Parquet export of Bybit's tables to S3 (moto's server over real HTTP on loopback): the public
tickers and trades under ``venue=bybit/``, the private executions, orders, positions and wallet
per account under ``venue=bybit/account=<id>/``.

Data: real Bybit v5 frames (nautilus_trader's test data: linear and option tickers, an
execution, a filled order, a position, a wallet update; tardis-node's publicTrade messages)
decoded by the collector's own decoders, spread over one UTC day (several copies per account,
ids suffixed with the account's label so that every row says whose it is) and written with the
collector's BatchWriter for two accounts. The files are read back and compared with the
decoded rows value by value: numeric columns as the exchange's exact decimal strings.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector_daemon.core.accounts import Account
from collector_daemon.rows import TableSpec
from collector_daemon.venues import get_venue
from collector_daemon.venues.bybit.private import BybitPrivateDecoder
from collector_daemon.venues.bybit.protocol import BybitDecoder
from orch_data import write
from orchestration.lib import export as ex
from test_export import s3_endpoint, storage  # noqa: F401  (fixtures: moto server, bucket)

pytestmark = pytest.mark.realdata

DAY = date(2026, 11, 30)
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
PREFIX = "tv"
NAUTILUS = "bybit/nautilus_test_data"
TARDIS = "bybit/tardis-node_test-embedded_bybit_ws_messages_v5+legacy.jsonl"
PRIVATE = ("bybit_executions", "bybit_orders", "bybit_positions", "bybit_wallet")
PUBLIC = ("bybit_tickers", "bybit_trades")
#: Private frames and the id column made unique per copy and account.
FRAMES = {"ws_account_execution": "exec_id", "ws_account_order_filled": "order_id",
          "ws_account_position": None, "ws_account_wallet": None}
COPIES = 4


def _start_us(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000


def _retimed(table: TableSpec, row: tuple, offset_us: int, suffix: str | None = None,
             id_column: str | None = None) -> tuple:
    """``row`` moved onto DAY at ``offset_us`` (+ the original's sub-minute part), receive_ts
    20 ms later; ``id_column`` suffixed."""
    out = dict(zip(table.columns, row))
    out["exchange_ts"] = _start_us(DAY) + offset_us + out["exchange_ts"] % 60_000_000
    out["receive_ts"] = out["exchange_ts"] + 20_000
    if id_column:
        out[id_column] = f"{out[id_column]}-{suffix}"
    return tuple(out[c] for c in table.columns)


@pytest.fixture
def bybit_day(migrated_db_url, real_data_dir) -> dict:
    """Two accounts' private rows and the public rows of DAY, written; returns
    ``{"accounts": {label: id}, "rows": {(table, account_id or None): [row dicts]}}``."""
    with psycopg.connect(migrated_db_url) as conn:
        ids = dict(conn.execute(
            "INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES "
            "('alpha', 'bybit', 'key-a', 'env:TV_A'), ('beta', 'bybit', 'key-b', 'env:TV_B') "
            "RETURNING label, account_id").fetchall())
    rows: dict[tuple[str, int | None], list[tuple]] = {}
    specs: dict[str, TableSpec] = {}
    for n, (label, account_id) in enumerate(sorted(ids.items())):
        decoder = BybitPrivateDecoder(Account(account_id, label, f"key-{label}", "env:UNUSED"))
        for frame, id_column in FRAMES.items():
            data = decoder.decode((real_data_dir / NAUTILUS / f"{frame}.json").read_text(), 0)
            specs[data.table.name] = data.table
            for k in range(COPIES + n):   # beta has one copy more: the counts differ
                rows.setdefault((data.table.name, account_id), []).extend(
                    _retimed(data.table, r, k * 5 * HOUR_US + n * 60_000_000, f"{label}-{k}",
                             id_column) for r in data.rows)
    for frame, category in (("ws_ticker_linear", "linear"), ("ws_ticker_option", "option")):
        data = BybitDecoder(category).decode((real_data_dir / NAUTILUS / f"{frame}.json").read_text(), 0)
        specs[data.table.name] = data.table
        rows.setdefault((data.table.name, None), []).extend(
            _retimed(data.table, r, k * HOUR_US) for k in range(24) for r in data.rows)
    decoder = BybitDecoder("linear")
    for line in (real_data_dir / TARDIS).read_text().splitlines():
        if '"topic":"publicTrade.' in line:
            data = decoder.decode(line.split(" ", 1)[-1] if not line.startswith("{") else line, 0)
            specs[data.table.name] = data.table
            rows.setdefault((data.table.name, None), []).extend(
                _retimed(data.table, r, 7 * HOUR_US + i * 1000) for i, r in enumerate(data.rows))
    for (table, _), table_rows in rows.items():
        assert write(migrated_db_url, specs[table], table_rows) == len(table_rows)
    return {"accounts": ids, "specs": specs,
            "rows": {key: [dict(zip(specs[key[0]].columns, r)) for r in table_rows]
                     for key, table_rows in rows.items()}}


def _as_stored(spec: TableSpec, layout: ex.TableLayout, row: dict) -> dict:
    """A decoded row as the export's files hold it (without venue): µs -> UTC datetimes; JSON
    text parsed (PostgreSQL's jsonb text spaces it differently than Bybit's)."""
    out = {}
    for c in layout.file_schema.names:
        v = row[c]
        if c in spec.timestamp_columns and v is not None:
            v = datetime.fromtimestamp(v / 1e6, UTC)
        if c in layout.json_columns and v is not None:
            v = json.loads(v)
        out[c] = v
    return out


def test_bybit_tables_export_per_venue_and_account(bybit_day, migrated_db_url, storage,
                                                   tmp_path) -> None:
    assert get_venue("bybit").export_tables == PUBLIC[:1] + ("bybit_trades", *PRIVATE)
    assert set(ex.export_tables("bybit")) == {*ex.CORE_EXPORT_TABLES, *PUBLIC, *PRIVATE}
    store = ex.make_store(storage.bucket, storage.client, str(tmp_path / "local"))
    settings = ex.ExportSettings(chunk_rows=3, spill_dir=str(tmp_path))
    ids = bybit_day["accounts"]
    alpha, beta = ids["alpha"], ids["beta"]
    now = datetime(2026, 12, 1, 1, tzinfo=UTC)
    client = storage.client()

    with psycopg.connect(migrated_db_url) as conn:
        layouts = {t: ex.table_layout(conn, t) for t in PUBLIC + PRIVATE}
    for table in PUBLIC + PRIVATE:
        exports = ex.export_table_day(migrated_db_url, store, PREFIX, table, DAY, settings, now)
        outcomes = ex.verify_export(migrated_db_url, store, table, DAY)
        assert all(o.passed for o in outcomes.values()), (table, outcomes)
        units = [(e.venue, e.account_id) for e in exports]
        assert units == ([("bybit", alpha), ("bybit", beta)] if table in PRIVATE
                         else [("bybit", None)])
        assert outcomes["sample"].metadata["sampled_rows"] > 0

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=storage.bucket)["Contents"])
    day = DAY.isoformat()
    assert keys == sorted(
        [f"{PREFIX}/venue=bybit/table={t}/date={day}/{name}" for t in PUBLIC
         for name in ("_manifest.json", "part-0.parquet")]
        + [f"{PREFIX}/venue=bybit/account={a}/table={t}/date={day}/{name}"
           for a in (alpha, beta) for t in PRIVATE for name in ("_manifest.json", "part-0.parquet")])

    specs, rows = bybit_day["specs"], bybit_day["rows"]
    with psycopg.connect(migrated_db_url) as conn:
        recorded = {(r[0], r[1]): r[2:] for r in conn.execute(
            "SELECT table_name, account_id, rows, source_rows, verified_at IS NOT NULL "
            "FROM export_manifest WHERE day = %s", (DAY,)).fetchall()}
    assert set(recorded) == {(t, None) for t in PUBLIC} | {(t, a) for t in PRIVATE
                                                           for a in (alpha, beta)}
    for (table, account), table_rows in rows.items():
        layout = layouts[table]
        folder = ex.partition_prefix(PREFIX, "bybit", table, DAY, account)
        body = client.get_object(Bucket=storage.bucket, Key=folder + "part-0.parquet")["Body"].read()
        path = tmp_path / f"{table}-{account}.parquet"
        path.write_bytes(body)
        got = pq.read_table(path)
        manifest = json.loads(client.get_object(Bucket=storage.bucket,
                                                Key=folder + "_manifest.json")["Body"].read())
        assert (manifest["venue"], manifest.get("account_id"), manifest["rows"]) == (
            "bybit", account, len(table_rows))
        assert recorded[(table, account)] == (len(table_rows), len(table_rows), True)
        meta = got.schema.metadata
        assert meta[b"tickvault.account_id" if account else b"tickvault.venue"] == (
            str(account).encode() if account else b"bybit")
        assert meta[b"tickvault.decimal_columns"].decode().split(",") == list(layout.decimal_columns)
        # Types: numeric as exact decimal text, jsonb as JSON text, text[] as a list of strings.
        for c in layout.decimal_columns + layout.json_columns:
            assert got.schema.field(c).type == pa.string()
        if table == "bybit_tickers":
            assert got.schema.field("fields").type == pa.list_(pa.string())
        # Every value, in the files' sort order.
        stored = [{c: (json.loads(v) if c in layout.json_columns and v is not None else v)
                   for c, v in r.items()} for r in got.to_pylist()]
        expected = sorted((_as_stored(specs[table], layout, r) for r in table_rows),
                          key=lambda r: tuple(r[c] for c in layout.sort_key))
        assert stored == expected, table
        if account is not None:
            assert {r["account_id"] for r in stored} == {account}

    # Exact decimal text, scale kept: values as Bybit sent them.
    alpha_exec = rows[("bybit_executions", alpha)][0]
    assert (alpha_exec["exec_fee"], alpha_exec["fee_rate"]) == ("26.3725275", "0.00055")
    orders = pq.read_table(tmp_path / f"bybit_orders-{alpha}.parquet").to_pylist()
    assert {(o["cum_exec_qty"], o["price"]) for o in orders} == {("0.100", "30000.50")}

    # One account's prefix holds nothing of the other's.
    for mine, other, other_label in ((alpha, beta, "beta"), (beta, alpha, "alpha")):
        prefix = f"{PREFIX}/venue=bybit/account={mine}/"
        listed = [o["Key"] for o in client.list_objects_v2(
            Bucket=storage.bucket, Prefix=prefix)["Contents"]]
        assert len(listed) == 2 * len(PRIVATE) and all(k.startswith(prefix) for k in listed)
        for table in PRIVATE:
            got = pq.read_table(tmp_path / f"{table}-{mine}.parquet").to_pylist()
            assert all(r["account_id"] == mine for r in got)
            assert not any(other_label in str(v) for r in got for v in r.values())
            assert len(got) == len(rows[(table, mine)]) != len(rows[(table, other)])

"""Retention drops only days whose Parquet export is verified; every other old day survives and
is reported. TimescaleDB (drop_chunks) through the Dagster asset, plain PostgreSQL (DELETE)
through the library. Data: the 2021-04-05 ticker capture (collector decoder, BatchWriter),
time-shifted onto further days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from collector_daemon.rows import QUOTES
from orch_data import CAPTURE_0405, capture_quote_rows, write
from orchestration.defs.assets.retention import tick_retention
from orchestration.lib import export as ex
from orchestration.lib.retention import apply_retention
from orchestration.resources import DatabaseResource, ObjectStorageResource

pytestmark = pytest.mark.realdata

D0 = date(2021, 4, 5)  # the capture's own day
Q_TS = QUOTES.columns.index("exchange_ts")
Q_RECV = QUOTES.columns.index("receive_ts")
PREFIX = "tv"


def shifted(rows: list[tuple], days: int) -> list[tuple]:
    shift = days * 86_400_000_000
    return [tuple(v + shift if i in (Q_TS, Q_RECV) else v for i, v in enumerate(r)) for r in rows]


def count(dsn: str, day: date) -> int:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM quotes WHERE exchange_ts >= %s AND "
                            "exchange_ts < %s", (start, start + timedelta(days=1))).fetchone()[0]


@pytest.fixture
def capture(real_data_dir) -> list[tuple]:
    return capture_quote_rows(real_data_dir / "deribit" / CAPTURE_0405)


def test_timescaledb_drops_only_the_verified_day(migrated_db_url, capture, tmp_path) -> None:
    recent = (datetime.now(UTC) - timedelta(days=1)).date()
    for days in (0, 1, 2):
        write(migrated_db_url, QUOTES, shifted(capture, days))
    write(migrated_db_url, QUOTES, shifted(capture, (recent - D0).days))
    store = ex.LocalStore(tmp_path)
    ex.export_table_day(migrated_db_url, store, PREFIX, "quotes", D0)
    assert all(o.passed for o in ex.verify_export(migrated_db_url, store, "quotes", D0).values())
    ex.export_table_day(migrated_db_url, store, PREFIX, "quotes", D0 + timedelta(days=1))  # never verified

    result = dg.materialize(
        [tick_retention],
        resources={"database": DatabaseResource(url=migrated_db_url),
                   "object_storage": ObjectStorageResource(bucket=None, local_dir=str(tmp_path),
                                                           prefix=PREFIX)},
        run_config={"ops": {"tick_retention": {"config": {"max_age_days": 30}}}},
        instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [mat] = result.asset_materializations_for_node("tick_retention")
    assert mat.metadata["dropped_days"].value == 1
    assert mat.metadata["dropped_rows"].value == len(capture)
    assert mat.metadata["kept_days"].value == 2
    kept = mat.metadata["kept"].value
    assert "2021-04-06..2021-04-06" in kept and "export not verified" in kept
    assert "2021-04-07..2021-04-07" in kept and "no export" in kept
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN

    assert [count(migrated_db_url, D0 + timedelta(days=d)) for d in (0, 1, 2)] == [
        0, len(capture), len(capture)]
    assert count(migrated_db_url, recent) == len(capture)
    with psycopg.connect(migrated_db_url) as conn:
        ranges = conn.execute("SELECT range_start FROM timescaledb_information.chunks "
                              "WHERE hypertable_name = 'quotes' ORDER BY 1").fetchall()
    assert [r[0].date() for r in ranges] == [D0 + timedelta(days=1), D0 + timedelta(days=2), recent]


def test_plain_postgres_deletes_verified_days_and_keeps_a_changed_one(migrated_plain_db_url,
                                                                      capture, tmp_path) -> None:
    dsn = migrated_plain_db_url
    for days in (0, 1, 2):
        write(dsn, QUOTES, shifted(capture, days))
    store = ex.LocalStore(tmp_path)
    for days in (0, 1):
        day = D0 + timedelta(days=days)
        ex.export_table_day(dsn, store, PREFIX, "quotes", day)
        assert all(o.passed for o in ex.verify_export(dsn, store, "quotes", day).values())
    late = list(shifted(capture, 1)[0])
    late[Q_TS] += 1  # a row that arrived after the export of 2021-04-06 (e.g. a backfill)
    write(dsn, QUOTES, [tuple(late)])

    decisions = apply_retention(dsn, store, max_age_days=30)
    assert [(d.days, d.dropped) for d in decisions] == [
        ((D0,), True), ((D0 + timedelta(days=1),), False), ((D0 + timedelta(days=2),), False)]
    assert "verification failed" in decisions[1].reason and "no export" in decisions[2].reason
    assert [count(dsn, D0 + timedelta(days=d)) for d in (0, 1, 2)] == [
        0, len(capture) + 1, len(capture)]
    with psycopg.connect(dsn) as conn:
        verified = conn.execute("SELECT day, verified_at IS NOT NULL FROM export_manifest "
                                "ORDER BY day").fetchall()
    assert verified == [(D0, True), (D0 + timedelta(days=1), False)]

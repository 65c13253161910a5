"""Per-venue assets: the code location with every venue (each venue one group, the same assets
under its key prefix, Bybit's private reconciliation partitioned by day x account), the gap
audit per stream and per account (a private reconnect makes no public gap), the
accounts_partitions sensor, and the new checks (trade_coverage, executions_unique,
positions_wallet_fresh) passing and failing with their values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from orch_dagster import gaps, mat_metadata
from orchestration.defs.assets.gaps import build_trade_gaps
from orchestration.defs.sensors import build_accounts_partitions_sensor
from orchestration.lib import quality
from orchestration.partitions import accounts_partitions
from orchestration.resources import DatabaseResource, VenueApiResource

REPO = Path(__file__).resolve().parents[2]
DAY = "2026-11-30"
D = datetime(2026, 11, 30, tzinfo=UTC)

ALL_VENUES_SCRIPT = """
import json
from datetime import datetime, timezone
import dagster as dg
from orchestration.definitions import defs
d = defs()
g = d.resolve_asset_graph()
nodes = {k.to_user_string(): g.get(k) for k in g.get_all_asset_keys()}
checks = {}
for ck in g.asset_check_keys:
    checks.setdefault(ck.asset_key.to_user_string(), []).append(ck.name)
priv = nodes["bybit/private_reconciliation"].partitions_def
schedule = d.resolve_schedule_def("bybit_private_reconciliation_nightly")
with dg.instance_for_test() as instance:
    instance.add_dynamic_partitions("bybit_accounts", ["alpha", "beta"])
    with dg.build_schedule_context(instance=instance, repository_def=d.get_repository_def(),
            scheduled_execution_time=datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc)) as ctx:
        reqs = schedule.evaluate_tick(ctx).run_requests
    # what a UI backfill over a past week offers: every day of the week x every account
    week = sorted(str(k) for k in priv.get_partition_keys(
        current_time=datetime(2026, 12, 1, tzinfo=timezone.utc), dynamic_partitions_store=instance)
        if "2026-11-24" <= k.keys_by_dimension["date"] <= "2026-11-30")
print(json.dumps({
    "groups": {k: n.group_name for k, n in nodes.items()},
    "parents": {k: sorted(p.to_user_string() for p in n.parent_keys) for k, n in nodes.items()},
    "checks": {k: sorted(v) for k, v in checks.items()},
    "private_dims": {dim.name: type(dim.partitions_def).__name__ for dim in priv.partitions_defs},
    "private_dynamic": priv.get_partitions_def_for_dimension("account").name,
    "jobs": sorted(j.name for j in d.jobs),
    "sensors": sorted(s.name for s in d.sensors),
    "nightly_requests": [(r.run_key, str(r.partition_key)) for r in reqs],
    "week": week,
}))
"""


def test_every_venue_gets_the_same_assets_in_its_own_group(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TICKVAULT_VENUES"}   # every registered venue
    env.update(DAGSTER_HOME=str(tmp_path), TICKVAULT_DATABASE_URL="postgresql://localhost/unused",
               PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", ALL_VENUES_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for venue in ("deribit", "bybit", "kraken"):
        for name in ("instrument_universe", "trade_gaps", "trades_backfill"):
            assert out["groups"][f"{venue}/{name}"] == venue
        assert out["parents"][f"{venue}/trades_backfill"] == [f"{venue}/trade_gaps"]
        assert f"{venue}/instrument_universe" in out["parents"][f"{venue}/trade_gaps"]
    assert out["groups"]["bybit/private_reconciliation"] == "bybit"
    assert "deribit/private_reconciliation" not in out["groups"]
    assert out["parents"]["bybit/trade_gaps"] == [
        "bybit/instrument_universe", "bybit_tickers", "bybit_trades", "connection_events"]
    assert out["parents"]["kraken/trade_gaps"] == ["connection_events", "kraken/instrument_universe", "trades"]
    assert out["checks"]["bybit/trades_backfill"] == ["trade_coverage"]
    assert out["parents"]["candles"] == [
        "bybit/trades_backfill", "bybit_trades", "deribit/trades_backfill", "kraken/trades_backfill",
        "trades"]
    assert out["checks"]["bybit/private_reconciliation"] == [
        "executions_match_rest", "executions_unique", "positions_wallet_fresh"]
    assert out["checks"]["kraken/trades_backfill"] == [
        "trade_coverage", "trade_seq_continuity", "trades_in_range", "trades_no_duplicates"]
    assert "kraken/trade_gaps" not in out["checks"]           # Kraken records no quotes
    assert out["private_dims"] == {"account": "DynamicPartitionsDefinition",
                                   "date": "DailyPartitionsDefinition"}
    assert out["private_dynamic"] == "bybit_accounts"
    assert "bybit_private_reconciliation_job" in out["jobs"]
    assert "accounts_partitions" in out["sensors"]
    assert out["week"] == sorted(f"{a}|2026-11-{d}" for a in ("alpha", "beta") for d in range(24, 31))
    assert out["nightly_requests"] == [["bybit:alpha:2026-11-30", "alpha|2026-11-30"],
                                       ["bybit:beta:2026-11-30", "beta|2026-11-30"]]


def _event(conn, connection_id, event, ts, channels=None, reason=None, window=None):
    conn.execute("INSERT INTO connection_events (venue, connection_id, event, event_ts, channels, reason, "
                 "window_start, window_end) VALUES ('bybit', %s, %s, %s, %s, %s, %s, %s)",
                 (connection_id, event, ts, channels, reason, *(window or (None, None))))


def test_audit_per_stream_and_account_private_reconnects_make_no_public_gap(migrated_db_url):
    """One public reconnect (publicTrade channels: a trades window) and, on account alpha's
    private connection, a reconnect with its lost window plus a disconnect never resubscribed:
    data_gaps holds the public window only; the private losses are alpha's metadata."""
    t = D + timedelta(hours=10)
    private = ["execution", "order", "position", "wallet"]
    with psycopg.connect(migrated_db_url) as conn:
        _event(conn, "bybit-linear-0", "subscribed", t, ["publicTrade.BTCUSDT"],
               window=(t - timedelta(seconds=30), t))
        _event(conn, "bybit-private-alpha", "disconnect", t + timedelta(hours=1), reason="ping timeout")
        _event(conn, "bybit-private-alpha", "subscribed", t + timedelta(hours=1, seconds=12), private,
               window=(t + timedelta(hours=1), t + timedelta(hours=1, seconds=12)))
        _event(conn, "bybit-private-alpha", "disconnect", t + timedelta(hours=5), reason="reset by peer")
    result = dg.materialize([build_trade_gaps("bybit")], partition_key=DAY, resources={
        "database": DatabaseResource(url=migrated_db_url),
        "bybit": VenueApiResource(venue="bybit", base_url="http://127.0.0.1:9")},
        instance=dg.DagsterInstance.ephemeral())
    meta = mat_metadata(result, "trade_gaps")
    rows = gaps(migrated_db_url)
    assert [(r["stream"], r["instrument_name"], r["gap_start"], r["gap_end"]) for r in rows] == [
        ("trades", "*", t - timedelta(seconds=30), t)]
    assert meta["by_stream"] == {"trades": {"disconnect": 1}}
    assert meta["per_account"] == {"alpha": {
        "connection_id": "bybit-private-alpha", "disconnects": 2, "lost_windows": 1, "lost_s": 12.0,
        "unresolved": 1, "channels": private}}
    assert meta["accounts_with_lost_windows"] == 1


def test_accounts_partitions_sensor_follows_the_accounts_table(migrated_db_url):
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_accounts_partitions_sensor(("bybit",))
    res = {"database": DatabaseResource(url=migrated_db_url)}
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref, enabled) VALUES "
                     "('alpha', 'bybit', 'k-a', 'env:A', true), ('beta', 'bybit', 'k-b', 'env:B', true), "
                     "('gamma', 'bybit', 'k-c', 'env:C', false), ('delta', 'kraken', 'k-d', 'env:D', true), "
                     "('desk|2', 'bybit', 'k-e', 'env:E', true)")   # '|' joins multi-partition keys

    def tick() -> dg.SensorExecutionData:
        with dg.build_sensor_context(instance=instance, resources=res) as ctx:
            data = sensor.evaluate_tick(ctx)
        for req in data.dynamic_partitions_requests or ():
            if isinstance(req, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            else:
                for key in req.partition_keys:
                    instance.delete_dynamic_partition(req.partitions_def_name, key)
        return data

    first = tick()
    [add] = first.dynamic_partitions_requests
    assert (add.partitions_def_name, sorted(add.partition_keys)) == ("bybit_accounts", ["alpha", "beta"])
    assert not first.run_requests
    assert tick().skip_message == "account partitions match the enabled accounts"
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("UPDATE accounts SET enabled = (label <> 'beta') WHERE venue = 'bybit'")
    changes = tick().dynamic_partitions_requests
    assert sorted((type(r).__name__, sorted(r.partition_keys)) for r in changes) == [
        ("AddDynamicPartitionsRequest", ["gamma"]), ("DeleteDynamicPartitionsRequest", ["beta"])]
    assert sorted(instance.get_dynamic_partitions(accounts_partitions("bybit").name)) == ["alpha", "gamma"]


def _account(conn, label: str) -> int:
    return conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES (%s, 'bybit', %s, "
                        "'env:X') RETURNING account_id", (label, f"key-{label}")).fetchone()[0]


def test_trade_coverage_share_of_the_stream(migrated_db_url):
    rows = ([("BTCUSDT", f"w{i}", "ws") for i in range(98)] + [("BTCUSDT", "r0", "rest"), ("BTCUSDT", "r1", "rest")]
            + [("ETHUSDT", f"e{i}", "ws") for i in range(50)])
    with psycopg.connect(migrated_db_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO bybit_trades (venue, category, instrument_name, trade_id, exchange_ts, receive_ts, "
            "price, amount, direction, source) VALUES ('bybit', 'linear', %s, %s, %s, %s, 100, 1, 'buy', %s)",
            [(n, i, D + timedelta(minutes=k), D + timedelta(minutes=k), s) for k, (n, i, s) in enumerate(rows)])
        passed = quality.trade_coverage(conn, "bybit", "bybit_trades", "trades", DAY, min_share=0.98)
        failed = quality.trade_coverage(conn, "bybit", "bybit_trades", "trades", DAY, min_share=0.99)
        conn.execute("INSERT INTO data_gaps (venue, stream, instrument_name, gap_start, gap_end, detected_by, "
                     "status, reason) VALUES ('bybit', 'trades', '*', %s, %s, 'audit', 'unrecoverable', 'x')",
                     (D + timedelta(hours=3), D + timedelta(hours=4)))
        with_gap = quality.trade_coverage(conn, "bybit", "bybit_trades", "trades", DAY, min_share=0.98)
        empty = quality.trade_coverage(conn, "bybit", "bybit_trades", "trades", "2026-11-29")
    assert passed.passed and not failed.passed
    assert {k: passed.metadata[k] for k in ("trades", "from_stream", "from_rest", "stream_share", "instruments")} == {
        "trades": 150, "from_stream": 148, "from_rest": 2, "stream_share": round(148 / 150, 6), "instruments": 2}
    assert passed.metadata["lowest_shares"] == {"BTCUSDT": 0.98, "ETHUSDT": 1.0}
    assert passed.metadata["complete"] is True
    assert with_gap.passed and with_gap.metadata["complete"] is False
    assert with_gap.metadata["unrecoverable_gaps"] == 1
    assert not empty.passed and empty.metadata["trades"] == 0


def test_executions_unique_and_positions_wallet_fresh(migrated_db_url):
    with psycopg.connect(migrated_db_url) as conn:
        alpha, beta = _account(conn, "alpha"), _account(conn, "beta")
        ins = ("INSERT INTO bybit_executions (venue, account_id, category, instrument_name, exec_id, exchange_ts, "
               "receive_ts, side, source) VALUES ('bybit', %s, 'linear', 'BTCUSDT', %s, %s, %s, 'buy', 'ws')")
        for account, exec_id, hour in ((alpha, "e1", 1), (alpha, "e2", 2), (beta, "e1", 1), (beta, "e1", 3)):
            conn.execute(ins, (account, exec_id, D + timedelta(hours=hour), D + timedelta(hours=hour)))
        ok = quality.executions_unique(conn, ["bybit_executions"], alpha, DAY)
        dup = quality.executions_unique(conn, ["bybit_executions"], beta, DAY)
        conn.execute("INSERT INTO bybit_positions (venue, account_id, category, instrument_name, position_idx, "
                     "exchange_ts, receive_ts, source) VALUES ('bybit', %s, 'linear', 'BTCUSDT', 0, %s, %s, 'rest')",
                     (alpha, D + timedelta(hours=20), D + timedelta(hours=20)))
        conn.execute("INSERT INTO bybit_wallet (venue, account_id, account_type, coin, exchange_ts, receive_ts, "
                     "source) VALUES ('bybit', %s, 'UNIFIED', 'USDT', %s, %s, 'ws')",
                     (alpha, D - timedelta(hours=30), D - timedelta(hours=30)))
        tables = ["bybit_positions", "bybit_wallet"]
        stale = quality.positions_wallet_fresh(conn, tables, alpha, DAY, now=D + timedelta(days=3))
        none = quality.positions_wallet_fresh(conn, tables, beta, DAY, now=D + timedelta(days=3))
        conn.execute("INSERT INTO bybit_wallet (venue, account_id, account_type, coin, exchange_ts, receive_ts, "
                     "source) VALUES ('bybit', %s, 'UNIFIED', 'USDT', %s, %s, 'rest')",
                     (alpha, D + timedelta(hours=23), D + timedelta(hours=23)))
        fresh = quality.positions_wallet_fresh(conn, tables, alpha, DAY, now=D + timedelta(days=3))
        today = quality.positions_wallet_fresh(conn, tables, alpha, DAY, now=D + timedelta(hours=21))
    assert ok.passed and ok.metadata == {"duplicates": {"bybit_executions": 0}, "samples": []}
    assert not dup.passed and dup.metadata["samples"] == [{"table": "bybit_executions", "exec_id": "e1", "copies": 2}]
    assert not stale.passed and stale.metadata["stale"] == ["bybit_wallet"]
    assert stale.metadata["tables"]["bybit_wallet"]["age_s"] == 54 * 3600.0     # 30 h before the day + 24 h
    assert stale.metadata["tables"]["bybit_positions"] == {
        "newest": (D + timedelta(hours=20)).isoformat(), "age_s": 4 * 3600.0, "fresh": True}
    assert not none.passed and none.metadata["stale"] == tables
    assert fresh.passed and fresh.metadata["tables"]["bybit_wallet"]["age_s"] == 3600.0
    # The current day: the reference is now (21:00), the 23:00 snapshot is not yet there.
    assert not today.passed and today.metadata["tables"]["bybit_wallet"]["age_s"] == 51 * 3600.0


OBSERVE_SCRIPT = """
import json, sys
import dagster as dg
from orchestration.definitions import defs
from orchestration.resources import DatabaseResource
sensor = defs().resolve_sensor_def("collector_tables_observer")
with dg.build_sensor_context(resources={"database": DatabaseResource(url=sys.argv[1])}) as ctx:
    data = sensor.evaluate_tick(ctx)
print(json.dumps({e.asset_key.to_user_string(): {k: v.value for k, v in e.metadata.items()}
                  for e in data.asset_events}))
"""


def test_observation_sensor_observes_every_venues_tables(migrated_db_url, tmp_path):
    """Every venue recorded: the sensor observes Bybit's own tables like the shared ones, and
    each stream table per venue writing it (Deribit and Kraken in trades, Bybit in its own)."""
    with psycopg.connect(migrated_db_url) as conn:
        now = conn.execute("SELECT date_trunc('second', now())").fetchone()[0]
        conn.cursor().executemany(
            "INSERT INTO bybit_trades (venue, category, instrument_name, trade_id, exchange_ts, receive_ts, "
            "price, amount, direction, source) VALUES ('bybit', 'linear', 'BTCUSDT', %s, %s, %s, 65000.5, "
            "0.001, 'buy', 'ws')",
            [(f"t{i}", now - ago, now - ago) for i, ago in enumerate(
                (timedelta(minutes=10), timedelta(minutes=20), timedelta(hours=2)))])
        conn.execute("INSERT INTO bybit_tickers (venue, category, instrument_name, exchange_ts, receive_ts, "
                     "message_type, fields) VALUES ('bybit', 'linear', 'BTCUSDT', %s, %s, 'snapshot', '{}')",
                     (now - timedelta(minutes=5), now - timedelta(minutes=5)))
        conn.cursor().executemany(
            "INSERT INTO trades (venue, instrument_name, trade_id, exchange_ts, receive_ts, price, amount, "
            "direction, source) VALUES (%s, %s, %s, %s, %s, 1.0, 1.0, 'buy', 'ws')",
            [("deribit", "BTC-PERPETUAL", "d1", now - timedelta(minutes=30), now),
             ("kraken", "ETH/USD", "k1", now - timedelta(hours=3), now)])
    env = {k: v for k, v in os.environ.items() if k != "TICKVAULT_VENUES"}   # every registered venue
    env.update(DAGSTER_HOME=str(tmp_path), TICKVAULT_DATABASE_URL=migrated_db_url, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", OBSERVE_SCRIPT, migrated_db_url], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    obs = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(obs) == {"quotes", "trades", "connection_events", "rejected_messages", "collector_status",
                        "bybit_tickers", "bybit_trades"}
    iso = lambda ago: (now - ago).isoformat()   # noqa: E731
    bt = obs["bybit_trades"]
    assert {k: v for k, v in bt.items() if k != "dagster/last_updated_timestamp"} == {
        "rows_estimate": 3, "rows_last_hour": 2, "latest": iso(timedelta(minutes=10)),
        "lag_s": pytest.approx(600, abs=60), "bybit/rows_last_hour": 2,
        "bybit/latest": iso(timedelta(minutes=10)), "bybit/lag_s": pytest.approx(600, abs=60)}
    assert obs["bybit_tickers"]["bybit/rows_last_hour"] == 1
    assert obs["bybit_tickers"]["bybit/latest"] == iso(timedelta(minutes=5))
    tr = obs["trades"]
    assert (tr["rows_estimate"], tr["rows_last_hour"], tr["deribit/rows_last_hour"], tr["kraken/rows_last_hour"]) == (
        2, 1, 1, 0)
    assert tr["deribit/latest"] == iso(timedelta(minutes=30)) and "kraken/latest" not in tr   # Kraken's stream is stale
    assert tr["latest"] == iso(timedelta(minutes=30))
    assert obs["quotes"] == {"rows_estimate": 0, "rows_last_hour": 0, "deribit/rows_last_hour": 0}
    assert not any("/" in k and not k.startswith("dagster/") for k in obs["connection_events"])

"""Definitions smoke test: the code location loads and the lineage is what the UI shows."""

from __future__ import annotations

import dagster as dg
import pytest

# The session records Deribit only (tests/orchestration/conftest.py: TICKVAULT_VENUES=deribit);
# tests/orchestration/test_venue_assets.py loads the code location with every venue.
EXPECTED_PARENTS = {
    "quotes": set(), "trades": set(), "connection_events": set(), "rejected_messages": set(),
    "collector_status": set(), "deribit/instrument_universe": set(),
    "deribit/trade_gaps": {"quotes", "trades", "connection_events", "deribit/instrument_universe"},
    "deribit/trades_backfill": {"deribit/trade_gaps"},
    "candles": {"trades", "deribit/trades_backfill"},
}
EXPECTED_CHECKS = {
    "deribit/trade_gaps": {"quote_freshness", "quote_coverage", "crossed_quotes", "quotes_in_range",
                           "quotes_no_duplicates", "open_interest_vs_rest"},
    "deribit/trades_backfill": {"trades_no_duplicates", "trade_seq_continuity", "trades_in_range",
                                "trade_coverage"},
    "candles": {"candles_match_trades", "exchange_candles_agree"},
}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    import os
    os.environ.setdefault("TICKVAULT_DATABASE_URL", "postgresql://localhost/unused")
    from orchestration.definitions import defs as build
    return build()


def test_asset_graph(defs):
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert EXPECTED_PARENTS.keys() <= keys
    for key, parents in EXPECTED_PARENTS.items():
        node = graph.get(dg.AssetKey.from_user_string(key))
        assert {p.to_user_string() for p in node.parent_keys} == parents, key
        assert node.description and "\n" not in node.description.strip(), key
    for key in ("quotes", "trades", "connection_events", "rejected_messages", "collector_status"):
        node = graph.get(dg.AssetKey(key))
        assert not node.is_executable and node.kinds == {"timescaledb"}
        assert node.group_name == "live_capture"
    for key in ("deribit/instrument_universe", "deribit/trade_gaps", "deribit/trades_backfill"):
        assert graph.get(dg.AssetKey.from_user_string(key)).group_name == "deribit"
    for key in ("deribit/trade_gaps", "deribit/trades_backfill", "candles"):
        node = graph.get(dg.AssetKey.from_user_string(key))
        assert isinstance(node.partitions_def, dg.DailyPartitionsDefinition)
        assert node.backfill_policy is None  # one run per day, tagged dagster/partition
    checks: dict[str, set] = {}
    for ck in graph.asset_check_keys:
        checks.setdefault(ck.asset_key.to_user_string(), set()).add(ck.name)
    assert {k: checks.get(k) for k in EXPECTED_CHECKS} == EXPECTED_CHECKS


def test_jobs_schedules_sensors(defs):
    for name in ("universe_job", "gap_audit_job", "nightly_job", "trades_backfill_job"):
        assert defs.resolve_job_def(name) is not None
    schedules = {s.name: s for s in defs.schedules}
    sensors = {s.name: s for s in defs.sensors}
    mine_s = {"universe_hourly", "gap_audit_every_15_minutes", "nightly_yesterday"}
    mine_x = {"collector_tables_observer", "backfill_on_recoverable_gaps"}
    assert mine_s <= set(schedules) and mine_x <= set(sensors)
    assert {schedules[n].default_status for n in mine_s} == {dg.DefaultScheduleStatus.RUNNING}
    assert {sensors[n].default_status for n in mine_x} == {dg.DefaultSensorStatus.RUNNING}
    assert {schedules[n].execution_timezone for n in mine_s} == {"UTC"}


def test_resources_are_configurable_with_descriptions(defs):
    from orchestration.resources import DatabaseResource, ObjectStorageResource, VenueApiResource
    for cls in (DatabaseResource, VenueApiResource, ObjectStorageResource):
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"


def test_dagster_definitions_validate_passes(tmp_path):
    """The CLI check the issue names: `dagster definitions validate` on workspace.yaml."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path),
               TICKVAULT_DATABASE_URL=os.environ.get("TICKVAULT_DATABASE_URL", "postgresql://localhost/unused"))
    done = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
                           "-w", "workspace.yaml"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful" in done.stdout + done.stderr

"""End to end: dagster-webserver + dagster-daemon on dagster-postgres storage, the lineage over
GraphQL, and a 3-day partition backfill launched through GraphQL (what the UI does) running
against the emulator's REST and a real TimescaleDB.

The range ends on 2026-08-18 and spans ``TICKVAULT_E2E_BACKFILL_DAYS`` days (default 3, what CI
runs; ``TICKVAULT_E2E_BACKFILL_DAYS=30`` is the 30-day range of the issue, ~3.5 min here). The
data covers 2026-08-16..18; every earlier day has no live capture, so its run fetches the whole
day from REST (none there: ``trades`` backfilled, ``quotes`` unrecoverable).

Both processes start in their own session; teardown kills each process group by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
N_DAYS = int(os.environ.get("TICKVAULT_E2E_BACKFILL_DAYS", "3"))
assert N_DAYS >= 3, "TICKVAULT_E2E_BACKFILL_DAYS: at least 3 (the days with data)"
DAYS = tuple(str(date(2026, 8, 18) - timedelta(days=i)) for i in range(N_DAYS - 1, -1, -1))
BACKFILLED = ("deribit/trade_gaps", "deribit/trades_backfill", "candles")
EXPECTED_DEPS = {
    "deribit/instrument_universe": set(), "quotes": set(), "trades": set(), "connection_events": set(),
    "rejected_messages": set(), "collector_status": set(),
    "deribit/trade_gaps": {"quotes", "trades", "connection_events", "deribit/instrument_universe"},
    "deribit/trades_backfill": {"deribit/trade_gaps"}, "candles": {"trades", "deribit/trades_backfill"},
    "parquet_export": {"quotes", "trades", "candles"},
}

ASSET_GRAPH_QUERY = """
{ assetNodes { assetKey { path } dependencyKeys { path } groupName kinds isPartitioned
    isExecutable
    assetChecksOrError { ... on AssetChecks { checks { name } } } } }
"""
LAUNCH = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack }
  ... on UnauthorizedError { message } ... on InvalidSubsetError { message }
  ... on PartitionSetNotFoundError { message } } }
"""
BACKFILL = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { id status numPartitions } ... on PythonError { message } } }
"""
RUNS = """
query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { runId status tags { key value } } } } }
"""
CHECKS = """
query($key: AssetKeyInput!, $name: String!) { assetCheckExecutions(assetKey: $key, checkName: $name,
  limit: 200) { runId status partition evaluation { success severity partition } } }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process in its own session (process group), stopped by PID."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.popen = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True,
                                      stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        pgid = self.popen.pid  # start_new_session: the group id is the child's pid
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(wait)
                # children (code servers, run workers) share the group: make sure they are gone
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue
            return

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _gql(url: str, query: str, variables: dict | None = None) -> dict:
    r = httpx.post(url, json={"query": query, "variables": variables or {}}, timeout=30)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.mark.timeout(180 + 15 * N_DAYS)
def test_webserver_daemon_lineage_and_backfill(pg_timescale, migrated_db_url, trades_days,
                                               emu_trades, tmp_path):
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    dagster_db = f"dagster_{uuid.uuid4().hex[:10]}"
    dagster_dsn = pg_timescale.create_database(dagster_db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "orchestration" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_dsn.replace("postgresql://", "postgresql+psycopg2://", 1),
        "TICKVAULT_DATABASE_URL": migrated_db_url,
        "TICKVAULT_DERIBIT_REST_URL": emu_trades.rest_url,
        "TICKVAULT_DERIBIT_HISTORY_URL": emu_trades.rest_url,
        "TICKVAULT_CURRENCY": "BTC",
        "TICKVAULT_KIND": "option,future",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    port = _free_port()
    url = f"http://127.0.0.1:{port}/graphql"
    procs: list[Proc] = []
    try:
        procs.append(Proc("webserver", [str(BIN / "dagster-webserver"), "-w", "workspace.yaml",
                                        "-h", "127.0.0.1", "-p", str(port)], env, tmp_path))
        deadline = time.monotonic() + 60
        while True:
            try:
                nodes = _gql(url, ASSET_GRAPH_QUERY)["assetNodes"]
                if nodes:
                    break
            except (httpx.HTTPError, AssertionError):
                pass
            assert procs[0].popen.poll() is None, procs[0].tail()
            assert time.monotonic() < deadline, procs[0].tail()
            time.sleep(0.5)
        timings["webserver_ready_s"] = time.monotonic() - t_start

        # Lineage: every asset with its upstreams, as the UI draws it.
        graph = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        deps = {k: {"/".join(d["path"]) for d in n["dependencyKeys"]} for k, n in graph.items()}
        assert {k: deps[k] for k in EXPECTED_DEPS} == EXPECTED_DEPS
        assert {k for k, n in graph.items() if not n["isExecutable"]} == {
            "quotes", "trades", "connection_events", "rejected_messages", "collector_status"}
        assert graph["trades"]["kinds"] == ["timescaledb"]
        assert all(graph[k]["isPartitioned"] for k in BACKFILLED)
        all_checks = {k: sorted(c["name"] for c in n["assetChecksOrError"].get("checks", []))
                      for k, n in graph.items()}
        checks = {k: all_checks[k] for k in BACKFILLED}
        assert sum(len(v) for v in checks.values()) == 12
        assert len(all_checks["parquet_export"]) == 4
        print("\nGraphQL lineage:")
        for k in sorted(EXPECTED_DEPS):
            print(f"  {k:22s} <- {sorted(deps[k]) or '-'}  group={graph[k]['groupName']} "
                  f"kinds={graph[k]['kinds']} checks={all_checks[k]}")

        # A backfill of the three daily assets over DAYS, launched like the UI does.
        launched = _gql(url, LAUNCH, {"params": {"partitionsByAssets": [
            {"assetKey": {"path": k.split("/")}, "partitions": {"range": {"start": DAYS[0], "end": DAYS[-1]}}}
            for k in BACKFILLED]}})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        # The daemon starts after the launch: its first backfill iteration picks it up at once.
        t_daemon = time.monotonic()
        procs.append(Proc("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                          env, tmp_path))
        deadline = time.monotonic() + 120 + 15 * N_DAYS
        status = None
        while time.monotonic() < deadline:
            status = _gql(url, BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]["status"]
            if status not in ("REQUESTED", "CANCELING", "FAILING"):
                break
            if "runs_done_s" not in timings:
                runs = _gql(url, RUNS, {"id": backfill_id})["runsOrError"]["results"]
                if len(runs) == N_DAYS and all(r["status"] in ("SUCCESS", "FAILURE") for r in runs):
                    timings["runs_done_s"] = time.monotonic() - t_daemon
            assert procs[1].popen.poll() is None, procs[1].tail()
            time.sleep(1)
        timings["backfill_s"] = time.monotonic() - t_daemon
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, procs[1].tail())

        runs = _gql(url, RUNS, {"id": backfill_id})["runsOrError"]["results"]
        by_partition = {next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition"): r
                        for r in runs}
        assert sorted(by_partition) == list(DAYS)  # one run per day (no BackfillPolicy)
        assert {r["status"] for r in runs} == {"SUCCESS"}

        # Every check recorded one result per day.
        for asset, names in checks.items():
            for name in names:
                # Only the backfill's executions: a */15 schedule tick may have a gap_audit_job
                # run in flight whose quote_freshness execution has no evaluation yet.
                execs = [e for e in _gql(url, CHECKS, {"key": {"path": asset.split("/")},
                                                       "name": name})["assetCheckExecutions"]
                         if e["runId"] in {r["runId"] for r in runs}]
                assert sorted(e["partition"] for e in execs) == list(DAYS), (asset, name, execs)
                assert all(e["evaluation"] is not None and e["evaluation"]["partition"] == e["partition"]
                           for e in execs), (asset, name, execs)

        # And the database says what the runs did (for the backfilled days: the daemon also runs
        # the RUNNING schedules, so a */15 tick during the test audits the wall clock's day).
        with psycopg.connect(migrated_db_url) as conn:
            status_rows = dict(conn.execute(
                "SELECT audit_day::text || ':' || stream || ':' || status, count(*) FROM data_gaps "
                "WHERE audit_day::text = ANY(%s) GROUP BY 1", (list(DAYS),)).fetchall())
            n_trades = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
            n_candles = conn.execute("SELECT count(*) FROM candles WHERE interval = '1d'").fetchone()[0]
        no_capture = {f"{d}:{s}": 1 for d in DAYS[:-3] for s in ("trades:backfilled",
                                                                "quotes:unrecoverable")}
        assert status_rows == {"2026-08-17:trades:backfilled": 4,
                               "2026-08-18:trades:backfilled": 1,
                               "2026-08-18:quotes:unrecoverable": 1, **no_capture}
        assert n_trades == len(trades_days["full"])
        assert n_candles == len({(t.instrument_name, t.timestamp // 86_400_000)
                                 for t in trades_days["full"]})
        timings["total_s"] = time.monotonic() - t_start
        print("timings:", {k: round(v, 1) for k, v in timings.items()})
    finally:
        for p in reversed(procs):
            p.stop()
        try:
            pg_timescale.drop_database(dagster_db)
        except Exception as exc:  # noqa: BLE001 - teardown must not mask the test result
            print(f"could not drop {dagster_db}: {exc}")

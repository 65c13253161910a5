"""The Grafana provisioning and dashboard of the stack (deploy/grafana), checked without Grafana
(its image cannot be pulled here; the compose stack test serves it):

* structure: the dashboard's panels, targets and variables use the provisioned datasource's uid;
  every panel target has a PromQL expression; the panels the deployment promises are there;
* every expression parses (``promtool check rules`` on a rule file made of them);
* every metric name the dashboard and the alert rules use is one a collector's ``/metrics``
  exports (a real ``MetricsServer`` on a Stats object filled from a real database);
* with Debian's ``prometheus`` installed: a real Prometheus loading deploy/prometheus's config
  and rules scrapes that ``MetricsServer``; every panel query returns data through its HTTP API
  and the alerts the data calls for go pending/firing.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from collector_daemon.metrics import MetricsServer, Stats, refresh_database_facts
from collector_daemon.storage.writer import BatchWriter

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tickvault.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "tickvault.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"

#: Grafana's variables, replaced as Grafana would for "All venues" at a short range
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$venue": ".*"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with Grafana's variables replaced) of every panel target."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((f"{panel['title']} / {target['refId']}", expr))
    return out


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS_YML.read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression of ours (all are ``tickvault_*``, plus ``up``)."""
    names = set(re.findall(r"\btickvault_[a-z0-9_]+\b", expr))
    if re.search(r"\bup\{", expr):
        names.add("up")
    return names


# --- structure ----------------------------------------------------------------------------


def test_dashboard_structure_and_datasource() -> None:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    assert sources[0]["url"] == "http://prometheus:9090" and sources[0]["isDefault"] is True
    uid = sources[0]["uid"]
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"] and providers[0]["options"]["path"]

    dash = dashboard()
    assert dash["uid"] == "tickvault" and dash["title"] and isinstance(dash["schemaVersion"], int)
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in {"timeseries", "stat"}, p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        assert p["targets"] and len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == uid, p["title"]
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == uid
        assert var["query"]["query"] == 'label_values(up{job="tickvault-collector"}, venue)'

    # the panels the deployment promises (issue 13): ingest rows/s per venue and table,
    # receive->commit p99, reconnects, open gaps, spool bytes, rejected frames, export freshness
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needle in ("sum by (venue, table) (rate(tickvault_rows_written_total",
                   'tickvault_receive_to_commit_ms{quantile="0.99"', "tickvault_reconnects_total",
                   "tickvault_open_gaps{", "tickvault_spool_bytes{", "tickvault_rejected_messages_total",
                   "time() - max by (venue, table) (tickvault_export_verified_day_timestamp_seconds"):
        assert needle in exprs, f"no panel queries {needle}"


def test_every_panel_query_parses(executable: Callable[[str, str], str], tmp_path: Path) -> None:
    promtool = executable("promtool", "apt-get install prometheus (Debian's package has promtool)")
    queries = panel_queries() + [("variable venue", 'up{job="tickvault-collector"}')]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


# --- against a collector's /metrics -------------------------------------------------------


@pytest.fixture
def collector_metrics(migrated_db_url: str, tmp_path: Path) -> Iterator[int]:
    """A ``MetricsServer`` (its port) on a Stats object as a running collector fills it: rows,
    reconnects, rejected frames, latency samples, the spool's directory, and the open gaps and
    verified exports read from a real database by ``refresh_database_facts``."""
    now = datetime.now(UTC)
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("INSERT INTO data_gaps (venue, stream, gap_start, gap_end, detected_by, detected_at) "
                     "VALUES ('deribit', 'trades', %s, %s, 'collector', %s)",
                     (now - timedelta(hours=3), now - timedelta(hours=3) + timedelta(seconds=5),
                      now - timedelta(hours=2)))
        conn.execute(
            "INSERT INTO export_manifest (venue, table_name, day, export_id, schema_version, source_rows, "
            "rows, bytes, object_keys, object_bytes, object_sha256, object_etags, manifest_key, storage_url, "
            "exported_at, verified_at) VALUES ('deribit', 'quotes', %s, 'x', 1, 1, 1, 1, '{k}', '{1}', "
            "'{s}', '{e}', 'm', 'file:///x', now(), now())", ((now - timedelta(days=4)).date(),))
    stats = Stats(venue="deribit", messages=5000, rejected=2, reconnects=1, connected=2,
                  spool_dir=tmp_path)
    stats.rows_written.update(quotes=4000, trades=900, instruments=50)
    stats.commit_latency.add_many([2.0, 3.0, 40.0])
    stats.exchange_latency.add_many([5.0, 6.0])

    async def refresh() -> None:
        writer = BatchWriter(migrated_db_url, venue="deribit")
        await writer.open()
        try:
            async with writer.pool.acquire() as conn:
                await refresh_database_facts(stats, conn)
        finally:
            await writer.close()

    asyncio.run(refresh())
    server = MetricsServer(stats, lambda: (True, {}), port=0)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def test_every_metric_used_is_exported(collector_metrics: int) -> None:
    text = httpx.get(f"http://127.0.0.1:{collector_metrics}/metrics").text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples} | {"up"}
    used = {name: where for where, expr in panel_queries() + alert_expressions()
            for name in metric_names(expr)}
    assert len(used) >= 15
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, f"metrics used but not exported by the collector: {missing}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(executable: Callable[[str, str], str], collector_metrics: int,
               tmp_path: Path) -> Iterator[str]:
    """A real Prometheus (its base URL) with deploy/prometheus/prometheus.yml and alerts.yml,
    scraping the collector fixture every second instead of collector-deribit:9108."""
    binary = executable("prometheus", "apt-get install prometheus")
    port = _free_port()
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS_YML)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tickvault-collector"]["static_configs"][0]["labels"] == {"venue": "deribit"}
    jobs["tickvault-collector"]["static_configs"][0]["targets"] = [f"127.0.0.1:{collector_metrics}"]
    jobs["prometheus"]["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"prometheus exited:\n{(tmp_path / 'prometheus.log').read_text()}"
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for(what: str, check: Callable[[], object], timeout_s: float = 90) -> object:
    """``check()``'s first truthy result, polled until ``timeout_s`` (then fail naming ``what``)."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.5)
    return result


def test_panel_queries_return_data_and_alerts_evaluate(prometheus: str) -> None:
    def query(expr: str) -> list[dict]:
        body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    results = {}
    for where, expr in panel_queries():
        results[where] = _wait_for(f"data for {where}: {expr}", lambda e=expr: query(e))
    rows = {r["metric"]["table"]: float(r["value"][1]) for r in results["Ingest rows/s per venue and table / A"]}
    assert rows.keys() == {"quotes", "trades", "instruments"}   # counters flat in this test: 0 rows/s
    [p99] = results["Latency p99 (ms) / A"]
    assert (p99["metric"], float(p99["value"][1])) == ({"venue": "deribit"}, 40.0)
    gaps = {r["metric"]["stream"]: float(r["value"][1]) for r in results["Open gaps / A"]}
    assert gaps == {"quotes": 0.0, "trades": 1.0}
    [export] = results["Export freshness / A"]
    assert export["metric"] == {"venue": "deribit", "table": "quotes"}
    assert 4 * 86400 <= float(export["value"][1]) < 5 * 86400 + 60

    def alert_states() -> dict[str, str]:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 9 and all(r["health"] == "ok" for r in rules), rules
        return {r["name"]: r["state"] for r in rules}

    # pending (for: ...): the gap open for 2 h, and no rows written (the counters stand still in
    # this test); firing at once: the export verified 4 days ago; inactive: the rest, except
    # the disk alerts, which follow this machine's disk (the spool directory is a temp folder)
    expected = {"TickvaultOpenGapTooOld": "pending", "TickvaultNoRowsWritten": "pending",
                "TickvaultExportNotVerified": "firing"}
    states = _wait_for("alert states", lambda: (s := alert_states()) and all(
        s[name] == state for name, state in expected.items()) and s)
    assert {name for name, state in states.items() if state == "inactive"} - {
        "TickvaultSpoolDiskFillingUp", "TickvaultSpoolDiskAlmostFull"} == {
        "TickvaultCollectorDown", "TickvaultCollectorAbsent", "TickvaultSpoolNotEmpty",
        "TickvaultExportNeverVerified"}

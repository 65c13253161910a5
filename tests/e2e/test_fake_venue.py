"""A venue plugs in with no edit outside its folder: the fake venue of ``tests/fake_venue/`` (two
streams in its own tables, recovery by time), named only by ``TICKVAULT_VENUE_PLUGINS``, is
migrated, collected by the daemon over a real WebSocket (a disconnect included, its prints
recovered over real HTTP), shown by ``tickvault status`` and audited and backfilled by the
Dagster definitions. Everything runs in subprocesses, so this test's own registry stays as it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
from websockets.asyncio.server import serve

TESTS = Path(__file__).resolve().parents[1]
BASE_MS = (int(time.time()) - 120) * 1000       # two minutes ago: "today" for the audit


def _tick(name: str, ms: int, px: float) -> dict:
    return {"ch": f"ticks.{name}", "ts": ms, "px": px}


def _print(pid: str, name: str, ms: int) -> dict:
    return {"id": pid, "s": name, "ts": ms, "px": 100.0 + int(pid[1:]), "qty": 0.5}


PHASE1 = [_tick(n, BASE_MS + i * 100, 1.0 + i) for i in range(5) for n in ("A", "B")]
PRINTS1 = [_print("p1", "A", BASE_MS + 50), _print("p2", "B", BASE_MS + 150), _print("p3", "A", BASE_MS + 350)]
LOST = [_print("p4", "A", BASE_MS + 1000), _print("p5", "B", BASE_MS + 1100)]    # during the outage
PHASE2 = [_tick(n, BASE_MS + 2000 + i * 100, 9.0 + i) for i in range(3) for n in ("A", "B")]
PRINTS2 = [_print("p6", "B", BASE_MS + 2050)]
HISTORY = PRINTS1 + LOST + PRINTS2


class _Rest(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        if url.path.endswith("/instruments"):
            body = ["A", "B"]
        elif url.path.endswith("/prints"):
            q = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
            body = [p for p in HISTORY if q["start"] <= p["ts"] <= q["end"]]
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def _env(dsn: str, tmp_path: Path, **more: str) -> dict:
    return dict(os.environ, TICKVAULT_DATABASE_URL=dsn, TICKVAULT_VENUE_PLUGINS="fake_venue",
                PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                TICKVAULT_METRICS_PORT="", TICKVAULT_SPOOL_DIR=str(tmp_path / "spool"),
                TICKVAULT_BACKOFF_MIN_S="0.05", TICKVAULT_BACKOFF_MAX_S="0.5",
                TICKVAULT_FLUSH_INTERVAL_S="0.2", **more)


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector_daemon.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _query(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


async def _collect(dsn: str, env: dict) -> tuple[int, str]:
    connections = []

    async def handler(ws) -> None:
        connections.append(ws)
        sub = json.loads(await ws.recv())
        await ws.send(json.dumps({"id": sub["id"], "ok": sub["args"]}))
        if len(connections) == 1:
            for frame in [*PHASE1, {"ch": "prints", "data": PRINTS1}]:
                await ws.send(json.dumps(frame))
            await ws.close(1011, "test: dropped")      # p4, p5 happen while it is down
        else:
            for frame in [*PHASE2, {"ch": "prints", "data": PRINTS2}]:
                await ws.send(json.dumps(frame))
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector_daemon.cli", "collect", "--venue", "fakex",
            env={**env, "TICKVAULT_FAKEX_WS_URL": f"ws://127.0.0.1:{port}/ws"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = await asyncio.to_thread(_query, dsn, (
                "SELECT (SELECT count(*) FROM fakex_prints), (SELECT count(*) FROM fakex_ticks), "
                "(SELECT count(*) FROM data_gaps WHERE venue = 'fakex' AND status <> 'open')"))
            if done == [(6, 16, 2)] or proc.returncode is not None:
                break
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode()


def test_a_fake_venue_plugs_in_everywhere(db_url, tmp_path) -> None:
    rest = ThreadingHTTPServer(("127.0.0.1", 0), _Rest)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    env = _env(db_url, tmp_path, TICKVAULT_FAKEX_REST_URL=f"http://127.0.0.1:{rest.server_port}/api")
    try:
        migrated = _cli(env, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        rc, log = asyncio.run(_collect(db_url, env))
        assert rc == 0, log

        # every print once: the stream's five and the two of the outage from REST
        prints = _query(db_url, "SELECT trade_id, instrument_name, source FROM fakex_prints ORDER BY trade_id")
        assert prints == [("p1", "A", "ws"), ("p2", "B", "ws"), ("p3", "A", "ws"), ("p4", "A", "rest"),
                          ("p5", "B", "rest"), ("p6", "B", "ws")]
        ticks = _query(db_url, "SELECT instrument_name, (extract(epoch FROM exchange_ts) * 1000)::bigint, "
                               "price FROM fakex_ticks ORDER BY 2, 1")
        assert ticks == sorted(((t["ch"][6:], t["ts"], t["px"]) for t in PHASE1 + PHASE2),
                               key=lambda r: (r[1], r[0]))
        # the lost window, per stream, by the stream's policy
        gaps = _query(db_url, "SELECT stream, detected_by, status, reason FROM data_gaps "
                              "WHERE venue = 'fakex' ORDER BY stream")
        assert [g[:3] for g in gaps] == [("prints", "disconnect", "backfilled"),
                                         ("ticks", "disconnect", "unrecoverable")]
        assert "the fake venue keeps no tick history" in gaps[1][3]
        assert "2 rows fetched, 2 new" in gaps[0][3]

        status = _cli(env, "status", "--hours", "1")
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert any(line.split()[:2] == ["fakex", "prints"] for line in lines), status.stdout
        assert any(line.split()[:2] == ["fakex", "ticks"] for line in lines), status.stdout
        header = next(line for line in lines if line.split()[:2] == ["venue", "instrument"]).split()
        counts = {line.split()[1]: dict(zip(header[2:], line.split()[2:len(header)]))
                  for line in lines if line.split()[:1] == ["fakex"] and line.split()[1] in ("A", "B")}
        assert {n: (c["ticks"], c["prints"]) for n, c in counts.items()} == {"A": ("8", "3"),
                                                                             "B": ("8", "3")}

        day = datetime.fromtimestamp(BASE_MS / 1000, UTC).date().isoformat()
        script = f"""
import json, dagster as dg
from orchestration.definitions import defs
from orchestration.partitions import VENUES
from orchestration.defs.assets.backfill import BACKFILL_ASSETS
from orchestration.defs.assets.gaps import GAP_ASSETS
from orchestration.resources import DatabaseResource, VenueApiResource
d = defs()
res = {{"database": DatabaseResource(url={db_url!r}), **{{n: VenueApiResource(venue=n) for n in VENUES}}}}
r = dg.materialize([*GAP_ASSETS, *BACKFILL_ASSETS], partition_key={day!r}, resources=res)
meta = {{k: v.value for e in r.get_asset_materialization_events()
         for k, v in e.materialization.metadata.items()}}
print(json.dumps({{"resources": sorted(d.resources), "ok": r.success,
                   "by_kind": meta.get("by_kind")}}))
"""
        # the deployment records the fake venue only (TICKVAULT_VENUES), so Dagster audits and
        # backfills nothing else (Deribit's REST is not reachable here)
        done = subprocess.run([sys.executable, "-c", script], env={**env, "TICKVAULT_VENUES": "fakex"},
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert {"fakex", "database"} <= set(out["resources"]) and out["ok"]
        # the reconnect's window once per stream (the stop and the quiet ticks after it too)
        assert out["by_kind"]["disconnect"] == 2, out
        audited = _query(db_url, "SELECT DISTINCT stream, status FROM data_gaps WHERE venue = 'fakex' "
                                 "AND detected_by = 'audit' ORDER BY stream")
        assert audited == [("prints", "backfilled"), ("ticks", "unrecoverable")]
    finally:
        rest.shutdown()

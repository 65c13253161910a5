"""Kraken through Dagster by the registry alone (TICKVAULT_VENUES=kraken): the universe asset
maps the configured pair through AssetPairs, the gap audit finds a hole in the stored trade ids
with its exact bounds, and the REST backfill fetches it by cursor. REST is the emulator serving
Nautilus' real http_trades.json (1,000 XBTUSDT trades of 2025-11-10/11)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import psycopg

from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues.kraken import messages as m

SOURCE = "kraken/nautilus_test_data/http_trades.json"
PAIR = "BTC/USDT"
DAY = "2025-11-10"
HOLE = range(10218600, 10218650)

SCRIPT = f"""
import json, dagster as dg
from orchestration.definitions import defs
from orchestration.partitions import VENUES
from orchestration.defs.assets.universe import UNIVERSE_ASSETS
from orchestration.defs.assets.gaps import GAP_ASSETS
from orchestration.defs.assets.backfill import BACKFILL_ASSETS
from orchestration.resources import DatabaseResource, VenueApiResource
import os
d = defs()
res = {{"database": DatabaseResource(url=os.environ["TICKVAULT_DATABASE_URL"]),
        **{{n: VenueApiResource(venue=n) for n in VENUES}}}}
u = dg.materialize(UNIVERSE_ASSETS, resources=res)
r = dg.materialize([*GAP_ASSETS, *BACKFILL_ASSETS], partition_key={DAY!r}, resources=res)
meta = {{e.asset_key.to_user_string(): {{k: str(v.value) for k, v in e.materialization.metadata.items()}}
         for e in r.get_asset_materialization_events()}}
keys = sorted(k.to_user_string() for k in d.resolve_asset_graph().get_all_asset_keys()
              if k.path[0] == "kraken")
groups = sorted({{d.resolve_asset_graph().get(dg.AssetKey.from_user_string(k)).group_name for k in keys}})
print(json.dumps({{"venues": list(VENUES), "resources": sorted(d.resources), "ok": u.success and r.success,
                   "meta": meta, "kraken_assets": keys, "groups": groups}}))
"""


def test_kraken_universe_gap_audit_and_backfill_through_the_registry(migrated_db_url, real_data_dir):
    raw = json.loads((real_data_dir / SOURCE).read_text())["result"]["XBTUSDT"]
    rows = [m.rest_trade_row(PAIR, r, 1_762_900_000_000_000) for r in raw if r[6] not in HOLE]
    with psycopg.connect(migrated_db_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO trades (venue, instrument_name, trade_id, trade_seq, exchange_ts, receive_ts, "
            "price, amount, direction, source, ord_type) VALUES (%s, %s, %s, %s, to_timestamp(%s / 1e6), "
            "to_timestamp(%s / 1e6), %s, %s, %s, 'ws', %s)",
            [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[16]) for r in rows])

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / SOURCE, venue="kraken",
                                               wait_for_clients=0, close_when_done=True))
        await server.start()
        try:
            await server.finished.wait()
            env = {**os.environ, "TICKVAULT_VENUES": "kraken", "TICKVAULT_DATABASE_URL": migrated_db_url,
                   "TICKVAULT_KRAKEN_REST_URL": server.rest_url, "TICKVAULT_KRAKEN_PAIRS": PAIR,
                   "TICKVAULT_KRAKEN_REST_PAIR_INTERVAL_S": "0"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SCRIPT, env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2])
            out, err = await asyncio.wait_for(proc.communicate(), 240)
            return proc.returncode, out.decode(), err.decode()
        finally:
            await server.stop()

    rc, out, err = asyncio.run(scenario())
    assert rc == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"] and result["venues"] == ["kraken"] and "kraken" in result["resources"]
    assert result["kraken_assets"] == ["kraken/instrument_universe", "kraken/trade_gaps", "kraken/trades_backfill"]
    assert result["groups"] == ["kraken"]
    assert result["meta"]["kraken/trade_gaps"]["by_stream"] == "{'trades': {'trade_seq': 1}}"
    with psycopg.connect(migrated_db_url) as conn:
        instruments = conn.execute("SELECT instrument_name, kind, base_currency, quote_currency, tick_size "
                                   "FROM instruments WHERE venue = 'kraken'").fetchall()
        gaps = conn.execute("SELECT instrument_name, seq_from, seq_to, detected_by, status FROM data_gaps "
                            "WHERE venue = 'kraken'").fetchall()
        stored = [r[0] for r in conn.execute(
            "SELECT trade_seq FROM trades WHERE venue = 'kraken' ORDER BY trade_seq").fetchall()]
        rest_rows = conn.execute("SELECT count(*) FROM trades WHERE venue = 'kraken' AND source = 'rest'"
                                 ).fetchone()[0]
    assert instruments == [(PAIR, "spot", "BTC", "USDT", 0.1)]     # from the real AssetPairs answer
    assert gaps == [(PAIR, HOLE[0], HOLE[-1], "audit", "backfilled")], (gaps, result["meta"])
    assert stored == [r[6] for r in raw] and rest_rows == len(HOLE)

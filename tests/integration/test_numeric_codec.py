"""The writer's ``numeric`` codec (collector_daemon/storage/numeric.py) against real PostgreSQL:
every value goes through binary COPY and comes back exactly, scale included (PostgreSQL's own
text output is the reference), in both directions, for Bybit's real decimal strings and edge
cases (zero with a scale, negatives, long integers and fractions, NaN and infinities)."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import re
from decimal import Decimal

import asyncpg

from collector_daemon.storage.writer import init_connection

EDGES = ["0", "0.00", "-0.5", "1", "-1", "100", "10000", "0.0001", "0.00001", "12345678.9012",
         "-12.3400", "0.00000128", "99999.9999", "1E+5", "123456789012345678901234567890123456.789",
         "0.000000000000000000000000000000012345", "67512.30", "NaN", "Infinity", "-Infinity"]


def _capture_decimals(path) -> list[str]:
    out = set()
    with gzip.open(path, "rt") as fh:
        for line in fh:
            raw = json.loads(line).get("raw") or ""
            out.update(re.findall(r'"(-?\d+\.\d+|-?\d+)"', raw))
    return sorted(out)


def test_numeric_round_trip(db_url, real_data_dir) -> None:
    rng = random.Random(11)
    values = EDGES + _capture_decimals(real_data_dir / "bybit" / (
        "cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"))
    values += [f"{rng.uniform(-1e9, 1e9):.{rng.randint(0, 12)}f}" for _ in range(2000)]

    async def scenario():
        conn = await asyncpg.connect(db_url)
        try:
            await init_connection(conn)
            await conn.execute("CREATE TEMP TABLE n (i int, v numeric)")
            for _ in range(2):   # the second pass is served from the memo
                await conn.execute("TRUNCATE n")
                await conn.copy_records_to_table("n", records=list(enumerate(values)))
                rows = await conn.fetch("SELECT i, v::text AS text, v FROM n ORDER BY i")
            back = await conn.fetchval("SELECT $1::numeric::text", "-0.001230")
            return rows, back
        finally:
            await conn.close()

    rows, back = asyncio.run(scenario())
    assert len(rows) == len(values) > 2000
    for r in rows:
        sent = values[r["i"]]
        assert r["text"] == {"1E+5": "100000"}.get(sent, sent), (sent, r["text"])
        assert r["v"].compare_total(Decimal(r["text"])) == 0, (sent, r["v"])   # exact, same scale
    assert back == "-0.001230"

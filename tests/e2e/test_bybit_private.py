"""Bybit private data, first part: accounts from the database, secrets by reference, the HMAC
``auth`` op checked for real by the emulator's ``/v5/private``, and the ``execution`` stream of
several accounts into ``bybit_executions`` (real WebSockets on loopback, TimescaleDB; the fills
are Nautilus' real v5 execution frame, re-keyed per account)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest
from aiolimiter import AsyncLimiter

from collector_daemon.connection import Connection
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.metrics import Stats
from collector_daemon.pipeline import Pipeline
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.core.accounts import SecretError, load_accounts, resolve_secret
from collector_daemon.venues.bybit.private import EXECUTION_FIELDS, BybitPrivateProtocol, signature

EXECUTION_NUMERIC, EXECUTION_TEXT = EXECUTION_FIELDS.numeric, EXECUTION_FIELDS.text

pytestmark = pytest.mark.realdata

CAPTURE = "bybit/cryptofeed_2026-08-09_v5_public_linear+spot_tickers_publicTrade_orderbook_kline+instruments-info.jsonl.gz"
EXECUTION = "bybit/nautilus_test_data/ws_account_execution.json"
SECRETS = {"key-a": "sEcReT-aaaa-1111", "key-b": "sEcReT-bbbb-2222", "key-c": "sEcReT-cccc-3333"}
COPIES = 3


def test_signature_matches_bybits_documented_algorithm() -> None:
    # hex(HMAC_SHA256(secret, "GET/realtime" + expires)), docs/v5/websocket/wss-authentication.mdx
    import hashlib
    import hmac
    assert signature("s3cr3t", 1662350400000) == hmac.new(
        b"s3cr3t", b"GET/realtime1662350400000", hashlib.sha256).hexdigest()


def test_secret_references(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TV_TEST_SECRET", "abc")
    (tmp_path / "s").write_text("def\n")
    assert resolve_secret("env:TV_TEST_SECRET") == "abc"
    assert resolve_secret(f"file:{tmp_path / 's'}") == "def"
    for ref, why in (("env:TV_TEST_NOPE", "not set"), (f"file:{tmp_path / 'x'}", "cannot read"),
                     ("vault:x", "expected env:VARIABLE")):
        with pytest.raises(SecretError, match=why):
            resolve_secret(ref)


def test_accounts_auth_and_executions_per_account(migrated_db_url, tmp_path, real_data_dir, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TV_SECRET_A", SECRETS["key-a"])
    (tmp_path / "secret-b").write_text(SECRETS["key-b"] + "\n")
    monkeypatch.setenv("TV_SECRET_C", "not-the-secret-of-key-c")          # a wrong key
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute(
            "INSERT INTO accounts (label, venue, key_id, secret_ref, run_tag, enabled) VALUES "
            "('alpha', 'bybit', 'key-a', 'env:TV_SECRET_A', 'strat-1', true), "
            f"('beta', 'bybit', 'key-b', 'file:{tmp_path / 'secret-b'}', NULL, true), "
            "('gamma', 'bybit', 'key-c', 'env:TV_SECRET_C', NULL, true), "
            "('off', 'bybit', 'key-d', 'env:TV_SECRET_D', NULL, false)")
    with psycopg.connect(migrated_db_url) as conn:   # a secret itself is refused by the schema
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref) "
                         "VALUES ('bad', 'bybit', 'k', 'plaintext-secret')")
    fill = json.loads((real_data_dir / EXECUTION).read_text())

    async def scenario():
        conn = await asyncpg.connect(migrated_db_url)
        accounts = await load_accounts(conn, "bybit")
        await conn.close()
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", wait_for_clients=0))
        server.venue.accounts = dict(SECRETS)
        server.venue.private_frames = [fill]
        server.venue.private_copies = COPIES
        await server.start()
        writer = BatchWriter(migrated_db_url, venue="bybit")
        await writer.open()
        pipeline = Pipeline(writer.write, flush_interval_s=0.1)
        pipeline.start()
        stats = Stats(venue="bybit")
        conns = [Connection(BybitPrivateProtocol(a, ("execution",)), server.ws_urls["/v5/private"], f"bybit-private-{a.label}",
                            pipeline, stats, AsyncLimiter(10, 1), backoff_min_s=0.05, backoff_max_s=0.2,
                            refused_retry_s=0.2, endpoint="private") for a in accounts]
        for c in conns:
            await c.set_channels(["execution"])
        tasks = [asyncio.create_task(c.run()) for c in conns]
        try:
            deadline = time.monotonic() + 30
            while True:   # wait on state: both good accounts stored, the bad one refused twice
                n = writer.rows_written.get("bybit_executions", 0)
                gamma = conns[2]
                if n == 2 * COPIES and gamma.refused == {"execution"} and stats.refused_channels >= 2:
                    break
                assert time.monotonic() < deadline, (n, gamma.refused, stats.refused_channels)
                await asyncio.sleep(0.05)
            return accounts, [(c.subscribed, c.refused) for c in conns]
        finally:
            for c in conns:
                await c.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pipeline.close()
            await writer.close()
            await server.stop()

    accounts, states = asyncio.run(scenario())
    assert [a.label for a in accounts] == ["alpha", "beta", "gamma"]       # 'off' is disabled
    assert states == [({"execution"}, set()), ({"execution"}, set()), (set(), {"execution"})]
    ids = {a.label: a.account_id for a in accounts}
    cols = ["account_id", "run_tag", "category", "instrument_name", "exec_id", "side", "is_maker", "seq",
            "source", "(extract(epoch FROM exchange_ts) * 1000)::bigint",
            *[f"{c}::text" for c in EXECUTION_NUMERIC.values()], *EXECUTION_TEXT.values(), "other"]
    with psycopg.connect(migrated_db_url) as conn:
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM bybit_executions ORDER BY account_id, exec_id").fetchall()
        events = conn.execute("SELECT connection_id, event, refused_channels, reason FROM connection_events "
                              "WHERE event = 'subscribed' ORDER BY event_id").fetchall()
        dump = json.dumps([conn.execute(f"SELECT * FROM {t}").fetchall() for t in
                           ("connection_events", "rejected_messages", "bybit_executions", "accounts")], default=str)
    f = fill["data"][0]
    assert len(rows) == 2 * COPIES
    for row in rows:
        d = dict(zip(cols, row))
        key = "key-a" if d["account_id"] == ids["alpha"] else "key-b"
        assert d["account_id"] in (ids["alpha"], ids["beta"])
        assert d["exec_id"].startswith(f"{f['execId']}-{key}-")           # nothing of A under B
        k = int(d["exec_id"].rsplit("-", 1)[1])
        assert d["run_tag"] == ("strat-1" if key == "key-a" else None)
        assert (d["category"], d["instrument_name"], d["side"], d["is_maker"], d["seq"], d["source"]) == (
            f["category"], f["symbol"], f["side"].lower(), f["isMaker"], f["seq"], "ws")
        assert d["(extract(epoch FROM exchange_ts) * 1000)::bigint"] == int(f["execTime"]) + k
        for field, col in EXECUTION_NUMERIC.items():
            assert d[f"{col}::text"] == (f.get(field) or None), field
        for field, col in EXECUTION_TEXT.items():
            expected = f.get(field) or None
            assert d[col] == (f"{expected}-{key}-{k}" if field == "orderId" else expected), field
        assert d["other"] == {"isLeverage": "0"}
    refused = [e for e in events if e[0] == "bybit-private-gamma"]
    assert refused and all(e[2] == ["execution"] and "Request not authorized" in e[3] for e in refused)
    log = caplog.text
    assert "auth" in log and "signature verification failed" in log          # the wrong key is reported
    for secret in [*SECRETS.values(), "not-the-secret-of-key-c"]:
        assert secret not in log and secret not in dump

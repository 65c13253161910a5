"""Tenant isolation by row-level security on the Bybit private tables: a role granted one
account (``tickvault accounts grant``) reads that account's rows only; selecting another
account's executions returns nothing; the collector's role (the owner) still writes every
account's rows through the real writer."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from collector_daemon import cli
from collector_daemon.core.accounts import Account
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues.bybit.private import EXECUTIONS, WALLET, execution_row, wallet_rows

FILL = {"category": "linear", "symbol": "BTCUSDT", "execId": "x", "execTime": "1746270400353", "side": "Sell",
        "execPrice": "95900.1", "execQty": "0.5", "isMaker": False, "seq": 1}
WALLET_MSG = {"accountType": "UNIFIED", "totalEquity": "1.5", "coin": [{"coin": "USDT", "walletBalance": "1.5"}]}


def test_a_tenant_sees_only_its_accounts_rows(migrated_db_url, monkeypatch) -> None:
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", migrated_db_url)
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        for role in ("tenant_a", "tenant_b"):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} NOLOGIN")
        ids = dict(conn.execute(
            "INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES ('a', 'bybit', 'ka', 'env:A'), "
            "('b', 'bybit', 'kb', 'env:B') RETURNING label, account_id").fetchall())
    accounts = {label: Account(i, label, f"k{label}", f"env:{label.upper()}") for label, i in ids.items()}

    async def write():
        writer = BatchWriter(migrated_db_url, venue="bybit")
        await writer.open()
        try:
            for label, account in accounts.items():
                await writer.write(EXECUTIONS, [execution_row(account, {**FILL, "execId": f"{label}-{k}"}, 1, "ws")
                                                for k in range(3)])
                await writer.write(WALLET, wallet_rows(account, WALLET_MSG, 1_000, 1_000))
        finally:
            await writer.close()
    asyncio.run(write())

    assert cli.main(["accounts", "grant", "--venue", "bybit", "--role", "tenant_a", "a"]) == 0
    assert cli.main(["accounts", "grant", "--venue", "bybit", "--role", "tenant_b", "b"]) == 0
    assert cli.main(["accounts", "grant", "--venue", "bybit", "--role", "nobody_here", "a"]) == 2
    with psycopg.connect(migrated_db_url, autocommit=True) as conn:
        owner = conn.execute("SELECT count(*) FROM bybit_executions").fetchone()[0]
        conn.execute("SET ROLE tenant_a")
        others = conn.execute("SELECT * FROM bybit_executions WHERE account_id = %s", (ids["b"],)).fetchall()
        mine = conn.execute("SELECT account_id, exec_id FROM bybit_executions ORDER BY exec_id").fetchall()
        wallet = conn.execute("SELECT DISTINCT account_id FROM bybit_wallet").fetchall()
        grants = conn.execute("SELECT role_name, account_id FROM account_readers").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM accounts")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO bybit_executions SELECT * FROM bybit_executions")
        conn.execute("RESET ROLE")
        conn.execute("SET ROLE tenant_b")
        b_sees = conn.execute("SELECT DISTINCT account_id FROM bybit_executions").fetchall()
    assert owner == 6                                         # the collector's role wrote both accounts
    assert others == []                                       # tenant A selecting B's executions gets nothing
    assert mine == [(ids["a"], f"a-{k}") for k in range(3)]
    assert wallet == [(ids["a"],)]
    assert grants == [("tenant_a", ids["a"])]                 # not B's grants either
    assert b_sees == [(ids["b"],)]

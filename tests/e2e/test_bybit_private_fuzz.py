"""10,000 fuzzed private frames (seeded mutations of Nautilus' real v5 execution, order, position
and wallet messages): the decoder never raises anything but RejectedFrame, and every row it
accepts is accepted by the database (written through the real writer, none refused)."""

from __future__ import annotations

import asyncio
import json
import random

import psycopg
import pytest

from collector_daemon.core.accounts import Account
from collector_daemon.storage.writer import BatchWriter
from collector_daemon.venues import Control, Data, RejectedFrame, Response
from collector_daemon.venues.bybit.private import BybitPrivateDecoder

pytestmark = pytest.mark.realdata

FRAMES = [f"bybit/nautilus_test_data/ws_account_{n}.json" for n in ("execution", "order_filled", "position", "wallet")]
ODD = [None, "", "nan", "Infinity", "1e999", "-0", "9" * 40, 1.5, -1, 2**63, True, [], {}, "x" * 300,
       "2026-12-05", "\u0000", "1" * 25, 0, "0"]


def mutate(rng: random.Random, msg: dict) -> str:
    msg = json.loads(json.dumps(msg))
    target = msg if rng.random() < 0.2 else rng.choice(msg["data"])
    if target is not msg and "coin" in target and rng.random() < 0.5:
        target = rng.choice(target["coin"])
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(target))
        roll = rng.random()
        if roll < 0.3:
            del target[key]
        else:
            target[key] = rng.choice(ODD)
        if not target:
            break
    text = json.dumps(msg)
    roll = rng.random()
    if roll < 0.03:
        return text[: rng.randrange(len(text))]
    if roll < 0.05:
        return text.replace('"topic"', '"topik"')
    return text


def test_ten_thousand_fuzzed_private_frames(migrated_db_url, real_data_dir) -> None:
    frames = [json.loads((real_data_dir / f).read_text()) for f in FRAMES]
    with psycopg.connect(migrated_db_url) as conn:
        account_id = conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref) "
                                  "VALUES ('f', 'bybit', 'k', 'env:X') RETURNING account_id").fetchone()[0]
    decoder = BybitPrivateDecoder(Account(account_id, "f", "k", "env:X"))
    rng = random.Random(20261205)
    by_table: dict = {}
    outcomes = {"rows": 0, "rejected": 0, "other": 0}
    for i in range(10_000):
        frame = mutate(rng, frames[i % len(frames)])
        try:
            item = decoder.decode(frame, 1_000_000 + i)
        except RejectedFrame:
            outcomes["rejected"] += 1
            continue
        if type(item) is Data:
            table, rows = by_table.setdefault(item.table.name, (item.table, []))
            # distinct keys per frame so every accepted row is really written
            rows += [tuple(f"{v}-{i}" if c in ("exec_id", "order_id", "coin", "instrument_name") else v
                           for c, v in zip(item.table.columns, r)) for r in item.rows]
            outcomes["rows"] += len(item.rows)
        else:
            assert type(item) in (Response, Control)
            outcomes["other"] += 1

    async def write():
        writer = BatchWriter(migrated_db_url, venue="bybit")
        await writer.open()
        try:
            return {name: await writer.write(table, rows) for name, (table, rows) in by_table.items()}
        finally:
            await writer.close()
    written = asyncio.run(write())
    with psycopg.connect(migrated_db_url) as conn:
        refused = conn.execute("SELECT reason FROM rejected_messages").fetchall()
    assert refused == []                                           # the decoder let nothing bad through
    assert written == {name: len(rows) for name, (_, rows) in by_table.items()}
    assert outcomes["rejected"] > 1000 and outcomes["rows"] > 1000 and set(written) == {
        "bybit_executions", "bybit_orders", "bybit_positions", "bybit_wallet"}

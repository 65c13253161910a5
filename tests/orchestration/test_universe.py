"""instrument_universe materialised in process against the emulator (recorded get_instruments)."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import psycopg

from orch_dagster import instrument_universe, mat_metadata, materialize, resources
from collector_daemon.core.universe import UNIVERSE_CHANNEL, parse_notification, read_universe


def _expected_ranking(rest_url: str, top_n: int | None) -> tuple[list[str], int]:
    inst = httpx.get(f"{rest_url}/public/get_instruments",
                     params={"currency": "ETH", "kind": "option", "expired": "false"}).json()["result"]
    summary = httpx.get(f"{rest_url}/public/get_book_summary_by_currency",
                        params={"currency": "ETH", "kind": "option"}).json()["result"]
    oi = {r["instrument_name"]: r["open_interest"] for r in summary if r.get("open_interest") is not None}
    names = sorted((i["instrument_name"] for i in inst if i.get("is_active", True)),
                   key=lambda n: (-(oi.get(n) or 0.0), n))
    return names[:top_n], len(inst)


def _notifications(listener: psycopg.Connection) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=1.0) if n.channel == UNIVERSE_CHANNEL]


def test_universe_refresh_ranks_upserts_and_notifies(migrated_db_url, emu_universe):
    with psycopg.connect(migrated_db_url) as conn:
        conn.execute("INSERT INTO instruments (venue, instrument_name, kind, base_currency, is_active) "
                     "VALUES ('deribit', 'ETH-1JAN21-1000-C', 'option', 'ETH', true)")
    listener = psycopg.connect(migrated_db_url, autocommit=True)
    listener.execute(f"LISTEN {UNIVERSE_CHANNEL}")
    try:
        top5, listed = _expected_ranking(emu_universe.rest_url, 5)
        assert listed > 400
        result = materialize([instrument_universe], None,
                             resources(migrated_db_url, emu_universe.rest_url, top_n=5))
        meta = mat_metadata(result, "instrument_universe")
        assert (meta["instruments"], meta["subscribed"], meta["version"], meta["changed"],
                meta["deactivated"]) == (listed, 5, 1, True, 1)
        assert meta["top_10"] == top5 and meta["added"] == sorted(top5) and meta["removed"] == []
        assert meta["rest_calls"] == 2
        [payload] = _notifications(listener)
        assert parse_notification(payload) == ("deribit", "ETH", 1)
        assert json.loads(payload) == {"venue": "deribit", "currency": "ETH", "version": 1}
        with psycopg.connect(migrated_db_url) as conn:
            ranked = conn.execute("SELECT instrument_name FROM instruments WHERE subscription_rank "
                                  "IS NOT NULL ORDER BY subscription_rank").fetchall()
            assert [r[0] for r in ranked] == top5
            assert conn.execute("SELECT is_active FROM instruments WHERE instrument_name = "
                                "'ETH-1JAN21-1000-C'").fetchone() == (False,)
            assert conn.execute("SELECT count(*) FROM instruments WHERE is_active").fetchone() == (listed,)
            assert conn.execute("SELECT count(*) FROM instruments WHERE open_interest IS NOT NULL "
                                "AND strike > 0 AND expiration_timestamp IS NOT NULL").fetchone()[0] > 0

        # The collector's read path (asyncpg, no special codec).
        async def read():
            conn = await asyncpg.connect(migrated_db_url)
            try:
                return await read_universe(conn, "deribit", "ETH"), await read_universe(conn, "deribit", "BTC")
            finally:
                await conn.close()
        current, none = asyncio.run(read())
        assert none is None  # -> the collector falls back to REST
        assert (current.version, current.subscribed, current.top_n, current.instruments) == (1, top5, 5, listed)

        # Same set again: no new version, no notification.
        again = mat_metadata(materialize([instrument_universe], None,
                                         resources(migrated_db_url, emu_universe.rest_url, top_n=5)),
                             "instrument_universe")
        assert (again["changed"], again["version"]) == (False, 1)
        assert _notifications(listener) == []

        # A smaller set: version 2, two names removed, their rank cleared.
        smaller = mat_metadata(materialize([instrument_universe], None,
                                           resources(migrated_db_url, emu_universe.rest_url, top_n=3)),
                               "instrument_universe")
        assert (smaller["changed"], smaller["version"], smaller["added"]) == (True, 2, [])
        assert smaller["removed"] == sorted(top5[3:])
        assert [parse_notification(p)[2] for p in _notifications(listener)] == [2]
        with psycopg.connect(migrated_db_url) as conn:
            assert conn.execute("SELECT count(*) FROM instruments WHERE subscription_rank IS NOT NULL"
                                ).fetchone() == (3,)
            assert conn.execute("SELECT subscribed FROM universe_versions WHERE version = 2"
                                ).fetchone() == (top5[:3],)
    finally:
        listener.close()


def test_universe_all_selects_and_ranks_the_whole_chain(migrated_db_url, emu_universe):
    """top_n None ("all"): every live instrument of the listing is subscribed, ranked by open
    interest (ties by name), and the version records top_n NULL."""
    ranking, listed = _expected_ranking(emu_universe.rest_url, None)
    assert len(ranking) == listed > 400
    meta = mat_metadata(materialize([instrument_universe], None,
                                    resources(migrated_db_url, emu_universe.rest_url, top_n=None)),
                        "instrument_universe")
    assert (meta["top_n"], meta["instruments"], meta["subscribed"], meta["version"]) == (
        "all", listed, listed, 1)
    assert meta["top_10"] == ranking[:10] and meta["added"] == sorted(ranking)[:200]
    with psycopg.connect(migrated_db_url) as conn:
        ranked = conn.execute("SELECT instrument_name, subscription_rank FROM instruments "
                              "WHERE subscription_rank IS NOT NULL ORDER BY subscription_rank").fetchall()
        assert ranked == [(n, i) for i, n in enumerate(ranking, start=1)]
        assert conn.execute("SELECT top_n, instruments, subscribed FROM universe_versions"
                            ).fetchall() == [(None, listed, ranking)]
    # The same whole chain again: no new version.
    again = mat_metadata(materialize([instrument_universe], None,
                                     resources(migrated_db_url, emu_universe.rest_url, top_n=None)),
                         "instrument_universe")
    assert (again["changed"], again["version"]) == (False, 1)


def test_a_group_that_is_not_a_currency_clears_the_ranks_it_dropped(migrated_db_url):
    """Bybit's "linear" group holds BTCUSDT and ETHUSDT (base coins BTC, ETH): a delisting
    clears the dropped symbol's rank, and the other groups' ranks stay."""
    from collector_daemon.core.universe import apply_universe
    from collector_daemon.storage.writer import init_connection
    from collector_daemon.venues.bybit.universe import Universe

    def info(symbol, base):
        return {"symbol": symbol, "baseCoin": base, "quoteCoin": "USDT", "settleCoin": "USDT",
                "contractType": "LinearPerpetual", "status": "Trading"}

    linear = [info("BTCUSDT", "BTC"), info("ETHUSDT", "ETH")]
    spot = Universe("spot", [info("SOLUSDT", "SOL")], {}, [])

    async def run():
        conn = await asyncpg.connect(migrated_db_url)
        await init_connection(conn)
        try:
            spot_names = [r[1] for r in spot.instrument_rows()]
            spot_set = Universe("spot", spot.instruments, {}, spot_names)
            await apply_universe(conn, spot_set, venue="bybit", currency="spot", top_n=None, kinds=("spot",))
            names = [r[1] for r in Universe("linear", linear, {}, []).instrument_rows()]
            first = await apply_universe(conn, Universe("linear", linear, {}, names), venue="bybit",
                                         currency="linear", top_n=None, kinds=("perpetual",))
            second = await apply_universe(conn, Universe("linear", linear[:1], {}, names[:1]),
                                          venue="bybit", currency="linear", top_n=None,
                                          kinds=("perpetual",))
            ranks = dict(await conn.fetch("SELECT instrument_name, subscription_rank FROM instruments "
                                          "WHERE venue = 'bybit'"))
            return names, spot_names, first, second, ranks
        finally:
            await conn.close()

    names, spot_names, first, second, ranks = asyncio.run(run())
    assert (first.version, second.version) == (2, 3) and second.removed == [names[1]]
    assert ranks == {names[0]: 1, names[1]: None, spot_names[0]: 1}

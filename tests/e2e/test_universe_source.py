"""Where the running collector takes its universe from: the ``universe_versions`` table that
the Dagster ``instrument_universe`` asset writes, with REST (the emulator's) only as fallback."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from collector_daemon.daemon import Collector
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues.deribit import VENUE
from collector_daemon.venues.deribit.rest import DeribitRest
from collector_daemon.core.universe import refresh_universe
from replay_helpers import CAPTURE, settings_for

pytestmark = pytest.mark.realdata


def _run(dsn, tmp_path, real, *, dagster_top_n, collector_top_n, age_s=None, **settings):
    """Dagster writes a set (top ``dagster_top_n``), optionally aged by ``age_s``; then a collector
    (top ``collector_top_n``) starts. Returns (Dagster's set, the collector's selection,
    universe_versions rows afterwards, whether the collector refreshed ``instruments``)."""

    async def scenario():
        server = EmulatorServer(EmulatorConfig(capture=real / CAPTURE, speed=1, close_when_done=True))
        await server.start(host="127.0.0.1", port=0)
        try:
            async with DeribitRest(server.rest_url) as rest:
                venue_settings = VENUE.load_settings(currency="ETH", top_n=dagster_top_n or "all")
                written = await refresh_universe(dsn, VENUE, venue_settings, rest, "ETH")
            if age_s is not None:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("UPDATE instruments SET updated_at = now() - %s * interval '1 second'",
                                 (age_s,))
            with psycopg.connect(dsn) as conn:
                before = conn.execute("SELECT max(updated_at) FROM instruments").fetchone()[0]
            collector = Collector(settings_for(dsn, tmp_path, top_n=collector_top_n, **settings),
                                  ws_url=server.ws_url, rest_url=server.rest_url)
            run = asyncio.create_task(collector.run())
            while not collector.connections or not collector.connections[0].subscribed:
                await asyncio.sleep(0.05)
            selected = list(collector.selected)
            collector.request_stop()
            await run
            return written.selected, selected, before
        finally:
            await server.stop()

    dagster_set, selected, before = asyncio.run(scenario())
    with psycopg.connect(dsn) as conn:
        versions = conn.execute("SELECT top_n, subscribed, kinds FROM universe_versions ORDER BY version").fetchall()
        after = conn.execute("SELECT max(updated_at) FROM instruments").fetchone()[0]
    return dagster_set, selected, versions, after > before


def test_collector_takes_its_set_from_the_table(migrated_db_url, tmp_path, real_data_dir):
    """Dagster's ranked top 5 serves a top-3 collector: it subscribes the first 3 and writes
    nothing (no REST refresh: the instruments were not touched again)."""
    dagster_set, selected, versions, refreshed = _run(migrated_db_url, tmp_path, real_data_dir,
                                                      dagster_top_n=5, collector_top_n=3)
    assert len(dagster_set) == 5 and selected == dagster_set[:3]
    assert versions == [(5, dagster_set, ["option"])]
    assert not refreshed


def test_a_set_that_does_not_serve_the_collector_is_left_alone(migrated_db_url, tmp_path, real_data_dir,
                                                               caplog):
    """A collector asking for the whole chain is not narrowed to Dagster's top 3: it subscribes
    every live ETH option from REST, warns, and does not overwrite Dagster's set."""
    with caplog.at_level(logging.WARNING, logger="collector_daemon.daemon"):
        dagster_set, selected, versions, refreshed = _run(migrated_db_url, tmp_path, real_data_dir,
                                                  dagster_top_n=3, collector_top_n="all")
    assert len(dagster_set) == 3 and len(selected) == 7 and set(dagster_set) < set(selected)
    assert versions == [(3, dagster_set, ["option"])] and not refreshed
    assert any("does not serve" in r.getMessage() and "top_n all" in r.getMessage() for r in caplog.records)


def test_a_stale_table_is_refreshed_by_the_collector(migrated_db_url, tmp_path, real_data_dir, caplog):
    """Nobody refreshed the table for longer than TICKVAULT_UNIVERSE_STALE_S (no Dagster running):
    the collector refreshes it from REST itself, as the asset would."""
    with caplog.at_level(logging.WARNING, logger="collector_daemon.daemon"):
        dagster_set, selected, versions, refreshed = _run(
            migrated_db_url, tmp_path, real_data_dir, dagster_top_n=3, collector_top_n=3,
            age_s=7200, universe_stale_s=3600)
    assert selected == dagster_set and versions == [(3, dagster_set, ["option"])]   # same set: no new version
    assert refreshed                                    # but the instruments were refreshed
    assert any("last refreshed" in r.getMessage() for r in caplog.records)

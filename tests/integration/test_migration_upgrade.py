"""A database migrated before ``schema/0017.venue_neutral_tables`` (``sync_state`` created by
kraken-0001, ``accounts`` and its triggers by bybit-0002/0003: the old files in
tests/fixtures/migrations_pre_0017) upgrades with ``migrate``: only 0017 applies, every row stays,
and the tables, triggers and functions are those of a database migrated from scratch."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
from yoyo import get_backend, read_migrations

from collector_daemon.storage.migrate import SCHEMA_DIR, _yoyo_url, migrate, migration_dirs

PRE = Path(__file__).resolve().parents[1] / "fixtures" / "migrations_pre_0017"
NEW = "0017.venue_neutral_tables"


def migrate_as_before_0017(dsn: str, tmp: Path) -> list[str]:
    """Apply the migrations as they were before 0017: the core files up to 0016 and each venue's
    folder with the old kraken-0001/bybit-0002/bybit-0003."""
    dirs = []
    for src in migration_dirs():
        dst = tmp / src.parent.name
        dst.mkdir()
        for f in src.glob("*.sql"):
            if f.stem != NEW:
                shutil.copy(PRE / f.name if (PRE / f.name).exists() else f, dst / f.name)
        dirs.append(str(dst))
    backend = get_backend(_yoyo_url(dsn))
    migrations = read_migrations(*dirs)
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def schema_facts(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return {
            "columns": conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity "
                "FROM information_schema.columns WHERE table_name IN ('sync_state', 'accounts') "
                "ORDER BY 1, 2").fetchall(),
            "constraints": conn.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid IN ('sync_state'::regclass, 'accounts'::regclass) ORDER BY 1, 2").fetchall(),
            "triggers": conn.execute(
                "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'accounts'::regclass "
                "AND NOT tgisinternal ORDER BY 1").fetchall(),
            "functions": conn.execute(
                "SELECT proname, prosrc FROM pg_proc WHERE proname IN "
                "('tickvault_touch_updated_at', 'tickvault_accounts_notify') ORDER BY 1").fetchall(),
            "comments": conn.execute(
                "SELECT c.relname, obj_description(c.oid) FROM pg_class c "
                "WHERE c.relname IN ('sync_state', 'accounts') ORDER BY 1").fetchall(),
        }


def test_database_migrated_before_0017_upgrades_and_keeps_its_rows(db_url, migrated_db_url, tmp_path):
    old = db_url.rsplit("/", 1)[0] + "/postgres"
    name = f"t_pre_0017_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(old, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = db_url.rsplit("/", 1)[0] + "/" + name
    try:
        applied = migrate_as_before_0017(dsn, tmp_path)
        assert NEW not in applied and "kraken-0001.status_sync_state" in applied
        assert "bybit-0002.private" in applied and "bybit-0003.private_streams" in applied
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref, run_tag) VALUES "
                         "('main', 'bybit', 'KEY1', 'env:BYBIT_SECRET', 'alpha'), "
                         "('desk', 'bybit', 'KEY2', 'file:/run/secrets/bybit', NULL)")
            conn.execute("INSERT INTO sync_state (venue, instrument_name, stream, range_start, cursor, "
                         "pages, rows_inserted, done) VALUES ('kraken', 'ETH/USD', 'trades', '0', "
                         "'1700000000123456789', 42, 41000, false)")
            before = conn.execute("SELECT account_id, label, key_id, secret_ref, run_tag, enabled, "
                                  "created_at, updated_at FROM accounts ORDER BY account_id").fetchall()

        report = migrate(dsn)
        assert report.applied == [NEW]
        assert migrate(dsn).applied == []

        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT account_id, label, key_id, secret_ref, run_tag, enabled, created_at, "
                                "updated_at FROM accounts ORDER BY account_id").fetchall() == before
            assert conn.execute("SELECT venue, instrument_name, stream, range_start, cursor, pages, "
                                "rows_inserted, rows_rejected, done FROM sync_state").fetchall() == [
                ("kraken", "ETH/USD", "trades", "0", "1700000000123456789", 42, 41000, 0, False)]
            # the triggers work after the upgrade (each once: no duplicate from 0017)
            conn.execute("LISTEN tickvault_accounts")
            conn.execute("UPDATE accounts SET enabled = false WHERE label = 'desk'")
            notes = [n.payload for n in conn.notifies(timeout=2, stop_after=1)]
            touched = conn.execute("SELECT updated_at > created_at FROM accounts WHERE label = 'desk'").fetchone()
            # the identity goes on after the kept rows
            new_id = conn.execute("INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES "
                                  "('third', 'bybit', 'KEY3', 'env:X') RETURNING account_id").fetchone()[0]
        assert notes == ["bybit"] and touched == (True,) and new_id == before[-1][0] + 1
        assert schema_facts(dsn) == schema_facts(migrated_db_url)
    finally:
        with psycopg.connect(old, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_fresh_database_applies_0017_before_the_venue_migrations_that_use_it(db_url):
    applied = migrate(db_url).applied
    for venue_migration in ("kraken-0001.status_sync_state", "bybit-0002.private", "bybit-0003.private_streams"):
        assert applied.index(NEW) < applied.index(venue_migration)
    assert SCHEMA_DIR.joinpath(NEW + ".sql").exists()
    with psycopg.connect(db_url) as conn:
        triggers = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'accounts'::regclass "
                                "AND NOT tgisinternal ORDER BY 1").fetchall()
    assert triggers == [("accounts_notify",), ("accounts_touch",)]

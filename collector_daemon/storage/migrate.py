"""Schema migrations: the versioned SQL files in ``schema/`` applied in order by yoyo-migrations
(ledger table ``_yoyo_migration``; re-running applies nothing).

The files are TimescaleDB-aware: with the extension loadable they create hypertables, on plain
PostgreSQL the same files apply and leave regular tables. Timescale-licensed steps (compression
policies) run only when ``timescaledb.license = 'timescale'``. :func:`migrate` reports which mode
it found and logs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg
from yoyo import get_backend, read_migrations

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate` did: migration ids applied now, and the server's capabilities."""

    applied: list[str]
    timescaledb_version: str | None
    timescaledb_license: str | None
    hypertables: list[str]


def _yoyo_url(dsn: str) -> str:
    scheme, rest = dsn.split("://", 1)
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {scheme}://...")
    return "postgresql+psycopg://" + rest


def migration_dirs(schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    """``schema_dir`` then the migration folder of every registered venue that has one
    (``Venue.schema_dir``: a venue's own tables), in that order."""
    from collector_daemon.venues import venues
    return [schema_dir] + [v.schema_dir for v in venues().values() if v.schema_dir is not None]


def migrate(dsn: str, schema_dir: Path = SCHEMA_DIR) -> MigrationReport:
    """Apply every pending migration of ``schema_dir`` and of the registered venues' migration
    folders (:func:`migration_dirs`) to the database at ``dsn``.

    Raises:
        psycopg.Error / yoyo exceptions: the database is unreachable or a migration failed (the
            failing migration's transaction is rolled back).
    """
    backend = get_backend(_yoyo_url(dsn))
    migrations = read_migrations(*map(str, migration_dirs(schema_dir)))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    applied = [mig.id for mig in pending]
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        version = row[0] if row else None
        license_ = None
        hypertables: list[str] = []
        if version:
            license_ = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()[0]
            hypertables = [r[0] for r in conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1")]
    report = MigrationReport(applied, version, license_, hypertables)
    if version:
        log.info("migrate: applied %d migration(s); TimescaleDB %s (%s edition), hypertables: %s",
                 len(applied), version, license_, ", ".join(hypertables) or "none")
        if license_ != "timescale":
            log.info("migrate: compression policies skipped: they need the Timescale-licensed "
                     "edition (timescaledb.license=%s)", license_)
    else:
        log.info("migrate: applied %d migration(s); plain PostgreSQL (no TimescaleDB): "
                 "quotes and trades are regular tables", len(applied))
    return report

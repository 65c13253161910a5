"""LocalPostgres against real servers (private temp directories, free ports), plus the
conftest fixtures built on it. Each server start costs about a second."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from collector_daemon.storage import localdb
from collector_daemon.storage.localdb import LocalPostgres, LocalPostgresError


def skip_or_fail(reason: str) -> None:
    """Skip locally, fail in CI (as tests/conftest.py does for its servers)."""
    if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def pgdir() -> Iterator[Path]:
    """A temp directory the postgres user can traverse (pytest's tmp_path is mode 700)."""
    base = Path(tempfile.mkdtemp(prefix="tickvault-test-localdb-"))
    base.chmod(0o755)
    yield base
    for sub in base.iterdir():  # stop what a failed test left running, then remove it all
        if (sub / "data").is_dir():
            LocalPostgres(sub).stop()
    shutil.rmtree(base, ignore_errors=True)


def _preload(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SHOW shared_preload_libraries").fetchone()[0]


def test_timescaledb_server(pgdir: Path) -> None:
    if not localdb.timescaledb_available():
        skip_or_fail("TimescaleDB is not installed: run scripts/install-timescaledb.sh")
    server = LocalPostgres(pgdir / "ts", timescaledb=True, durable=False).start()
    assert server.timescaledb_loaded
    dsn = server.create_database("tickvault")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION timescaledb")
        (version,) = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        assert version.split(".")[0] == "2"
        assert conn.execute("SHOW timescaledb.telemetry_level").fetchone()[0] == "off"
        # The hypertable machinery works (the licensed features are not needed here).
        conn.execute("CREATE TABLE t (ts timestamptz NOT NULL, v int)")
        conn.execute("SELECT create_hypertable('t', by_range('ts'))")
    server.stop()
    assert not server.running()


def test_plain_server_restart_reuses_port(pgdir: Path) -> None:
    datadir = pgdir / "plain"
    server = LocalPostgres(datadir, timescaledb=False, durable=False)
    assert not server.running()
    server.start()
    assert server.running() and not server.timescaledb_loaded
    port = server.port
    assert port is not None and port != 5432
    dsn = server.create_database("tickvault")
    assert dsn == f"postgresql://postgres@127.0.0.1:{port}/tickvault"
    assert server.create_database("tickvault") == dsn  # idempotent
    assert "timescaledb" not in _preload(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
        # Loopback TCP and the unix socket inside datadir both work.
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
    with psycopg.connect(host=str(datadir / "run"), port=port, user="postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    pid = (datadir / "data" / "postmaster.pid").read_text().split()[0]
    server.start()  # already running: no-op
    assert (datadir / "data" / "postmaster.pid").read_text().split()[0] == pid

    server.stop()
    assert not server.running()
    server.stop()  # idempotent
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)

    again = LocalPostgres(datadir, timescaledb=False, durable=False)  # a new process, say
    assert again.port == port  # remembered before starting
    again.start()
    assert again.port == port
    with psycopg.connect(again.dsn("tickvault")) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
    again.stop()


def test_cli_start_url_stop(pgdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    localdb.add_arguments(parser)
    datadir = str(pgdir / "cli")

    assert localdb.main(parser.parse_args(["start", "--datadir", datadir, "--dbname", "tv"])) == 0
    out = capsys.readouterr().out.strip().splitlines()
    dsn = out[-1]
    assert dsn.startswith("postgresql://postgres@127.0.0.1:") and dsn.endswith("/tv")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("tv",)

    assert localdb.main(parser.parse_args(["url", "--datadir", datadir, "--dbname", "tv"])) == 0
    assert capsys.readouterr().out.strip() == dsn

    assert localdb.main(parser.parse_args(["stop", "--datadir", datadir])) == 0
    assert not LocalPostgres(datadir).running()

    # url of a directory that never started: an error, not a made-up port.
    assert localdb.main(parser.parse_args(["url", "--datadir", str(pgdir / "none")])) == 1
    assert "start" in capsys.readouterr().err


def test_errors_are_clear(pgdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKVAULT_PG_BINDIR", str(pgdir / "nowhere"))
    with pytest.raises(LocalPostgresError, match="TICKVAULT_PG_BINDIR"):
        localdb.find_bindir()
    monkeypatch.delenv("TICKVAULT_PG_BINDIR")
    with pytest.raises(LocalPostgresError, match="start the server first"):
        LocalPostgres(pgdir / "never").dsn("x")
    if os.geteuid() == 0:  # the server user must be able to reach the data directory
        private = pgdir / "private"
        private.mkdir(mode=0o700)
        with pytest.raises(LocalPostgresError, match="cannot enter"):
            LocalPostgres(private / "pg").start()


def test_fixtures_give_fresh_databases(db_url: str, plain_db_url: str, pg_plain) -> None:
    assert db_url != plain_db_url
    assert "timescaledb" in _preload(db_url)
    assert "timescaledb" not in _preload(plain_db_url)
    assert pg_plain.port != 5432
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION timescaledb")
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)


def test_fixtures_are_per_test(db_url: str) -> None:
    # A different database from the previous test's: nothing of it is here.
    with psycopg.connect(db_url) as conn:
        ext = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        assert ext.fetchone() == (0,)


def test_pip_installed_postgresql_is_the_last_resort(pgdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PostgreSQL 16 that the PyPI package pgserver bundles (``tickvault[localpg]``, what
    scripts/run installs on a machine without PostgreSQL) runs the local server and takes the
    whole schema, as plain PostgreSQL."""
    bindirs = [b for b in localdb._pip_bindirs() if localdb._has_binaries(b)]
    if not bindirs:
        skip_or_fail("pgserver is not installed in this Python (pip install -e '.[test]')")
    from collector_daemon.storage.migrate import migrate

    monkeypatch.setenv("TICKVAULT_PG_BINDIR", str(bindirs[0]))
    server = LocalPostgres(pgdir / "pip", timescaledb=False, durable=False).start()
    dsn = server.create_database("tickvault")
    report = migrate(dsn)
    assert report.timescaledb_version is None
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("16")
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"quotes", "trades", "instruments", "data_gaps", "universe_versions"} <= tables
    server.stop()

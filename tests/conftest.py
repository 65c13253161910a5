"""Shared test infrastructure: private PostgreSQL servers and the real-data location.

Servers (session-scoped, started through ``collector_daemon.storage.localdb.LocalPostgres``,
the same code as ``tickvault localdb``, each in its own temp directory on a free port; the
machine's own server on 5432 is never touched):

* ``pg_timescale`` -- TimescaleDB preloaded. Skips when the extension is not installed
  (``scripts/install-timescaledb.sh``), but fails when ``CI`` is set.
* ``pg_plain``     -- plain PostgreSQL (no preload). Skips/fails likewise without PostgreSQL.

Per-test databases (a new, uniquely named database for each test, dropped afterwards; the
DSN is ``postgresql://postgres@127.0.0.1:<port>/<name>``):

* ``db_url`` / ``plain_db_url``                   -- empty database on the timescale / plain server
* ``migrated_db_url`` / ``migrated_plain_db_url`` -- the same after
  ``collector_daemon.storage.migrate.migrate(dsn)`` (schema/*.sql)

Real captures: ``real_data_dir`` is ``<repo>/../shared/data/real``. Without it tests using
it (and every test marked ``@pytest.mark.realdata``) skip locally and FAIL when ``CI`` is
truthy, so real-data tests can never skip silently in CI.

The servers are throwaway (fsync off). Set ``TICKVAULT_TEST_KEEP_PG=1`` to keep their
directories (paths are printed) for a post-mortem.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector_daemon.storage.localdb import (
    LocalPostgres,
    LocalPostgresError,
    find_bindir,
    timescaledb_available,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "real"


def in_ci() -> bool:
    """True when the CI environment variable is truthy (true/1/yes, any case)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def skip_or_fail(reason: str) -> None:
    """pytest.skip locally; pytest.fail in CI so nothing is skipped silently there."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "realdata: needs the real exchange captures in ../shared/data/real"
    )


#: The order of the test folders: quick and CPU-light first, the compose stack last. CI
#: (.ci/run) builds the stack's images in the background while the others run, so the stack's
#: tests find them built instead of waiting ~4 min for them.
FOLDER_ORDER = ("unit", "integration", "history", "emulator", "orchestration", "fake_venue", "e2e",
                "faults", "deployment")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        parts = item.path.relative_to(REPO_ROOT / "tests").parts
        return FOLDER_ORDER.index(parts[0]) if len(parts) > 1 and parts[0] in FOLDER_ORDER else 0
    items.sort(key=rank)   # stable: the order within a folder is pytest's


def pytest_runtest_setup(item: pytest.Item) -> None:
    # A test marked realdata needs the captures even if it does not take real_data_dir.
    if item.get_closest_marker("realdata") is not None:
        _require_real_data()


def _require_real_data() -> Path:
    if not REAL_DATA_DIR.is_dir():
        skip_or_fail(
            f"real exchange captures not found at {REAL_DATA_DIR}: "
            "clone beside ../shared to run the real-data tests"
        )
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``<repo>/../shared/data/real`` (skip if absent; fail if absent and CI is set)."""
    return _require_real_data()


# --- servers ------------------------------------------------------------------------------


def _start_server(name: str, timescaledb: bool) -> Iterator[LocalPostgres]:
    try:
        find_bindir()
    except LocalPostgresError as exc:
        skip_or_fail(f"no PostgreSQL server binaries: {exc}")
    if timescaledb and not timescaledb_available():
        skip_or_fail(
            "TimescaleDB is not installed for the local PostgreSQL: run "
            "scripts/install-timescaledb.sh as root (scripts/test does it when run as root)"
        )
    # Not pytest's tmp_path: /tmp/pytest-of-root is mode 700, which the postgres user (the
    # server's user when we are root) cannot enter. mkdtemp + 755 is private yet traversable.
    base = Path(tempfile.mkdtemp(prefix=f"tickvault-{name}-"))
    base.chmod(0o755)
    server = LocalPostgres(base / "pg", timescaledb=timescaledb, durable=False)

    def cleanup() -> None:
        try:
            server.stop()
        finally:
            if os.environ.get("TICKVAULT_TEST_KEEP_PG"):
                print(f"\nkept {name} server directory: {base}")
            else:
                shutil.rmtree(base, ignore_errors=True)

    atexit.register(cleanup)  # also when the session dies before fixture teardown
    try:
        server.start()
        yield server
    finally:
        atexit.unregister(cleanup)
        cleanup()


@pytest.fixture(scope="session")
def pg_timescale() -> Iterator[LocalPostgres]:
    """A private PostgreSQL with TimescaleDB preloaded, for the whole session."""
    yield from _start_server("timescale", timescaledb=True)


@pytest.fixture(scope="session")
def pg_plain() -> Iterator[LocalPostgres]:
    """A private plain PostgreSQL (no TimescaleDB preloaded), for the whole session."""
    yield from _start_server("plain", timescaledb=False)


def _fresh_database(server: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    # Readable and unique, within PostgreSQL's 63-byte identifier limit.
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"t_{stem}_{uuid.uuid4().hex[:10]}"
    dsn = server.create_database(name)
    yield dsn
    try:
        server.drop_database(name)
    except LocalPostgresError as exc:  # a failed drop must not fail the test
        print(f"warning: could not drop test database {name}: {exc}")


@pytest.fixture
def db_url(pg_timescale: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a new empty database on the TimescaleDB server (dropped after the test).
    The extension is loadable there; no migration has run."""
    yield from _fresh_database(pg_timescale, request)


@pytest.fixture
def plain_db_url(pg_plain: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a new empty database on the plain PostgreSQL server (dropped after the test)."""
    yield from _fresh_database(pg_plain, request)


@pytest.fixture
def migrated_db_url(db_url: str) -> str:
    """``db_url`` after ``collector_daemon.storage.migrate.migrate`` (hypertables on)."""
    from collector_daemon.storage.migrate import migrate

    migrate(db_url)
    return db_url


@pytest.fixture
def migrated_plain_db_url(plain_db_url: str) -> str:
    """``plain_db_url`` after ``collector_daemon.storage.migrate.migrate`` (plain tables)."""
    from collector_daemon.storage.migrate import migrate

    migrate(plain_db_url)
    return plain_db_url


# --- external programs --------------------------------------------------------------------


@pytest.fixture(scope="session")
def executable() -> Callable[[str, str], str]:
    """``executable(name, install_hint)``: the path of program ``name`` on PATH (e.g. promtool);
    skips naming ``install_hint`` when it is missing (fails when ``CI`` is set)."""

    def find(name: str, install_hint: str) -> str:
        path = shutil.which(name)
        if path is None:
            skip_or_fail(f"{name} not found on PATH: {install_hint}")
        return path

    return find

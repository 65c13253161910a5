"""TLS to PostgreSQL with ``sslmode=verify-full&sslrootcert=<CA file>`` in the database URL, for
every client of the database: the collector's asyncpg writer, the migrations (yoyo + psycopg),
psycopg (Dagster resources, orchestration/lib), the export's ADBC stream, and Dagster's own
storage (dagster-postgres, psycopg2). A CA and a server certificate (SAN 127.0.0.1 and
localhost) are generated here; the server accepts TCP connections over TLS only (``hostssl``), so
a client that silently fell back to plain TCP would fail. A server certificate the given CA did
not sign fails each client at once with a certificate verification error (the collector does
not retry it as if the database were down)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import dagster as dg
import psycopg
import pytest
import yaml
from collector_daemon import cli
from collector_daemon.emulator.tls import key_pem, make_ca, make_server_cert, pem
from collector_daemon.rows import QUOTES
from collector_daemon.storage.localdb import LocalPostgres
from collector_daemon.storage.migrate import migrate
from collector_daemon.storage.writer import BatchWriter
from orchestration.lib import export as ex
from orchestration.resources import DatabaseResource

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY = date(2021, 4, 5)
T0_US = int(datetime(2021, 4, 5, 17, 47, 36, tzinfo=UTC).timestamp() * 1e6)


def _quote(i: int) -> tuple:
    return ("deribit", "ETH-9APR21-1950-C", T0_US + i * 1000, T0_US + i * 1000 + 250, 0.0795, 4.0,
            0.0945, 5.0, 0.084155, 78.74, 51.06, 117.97, 2115.89, "ETH-9APR21", 2103.4, 3963.0,
            0.06, 0.8609, 0.00134, 0.46511, -5.09811, 0.16173, 0.0, "open")


@dataclass
class TlsServer:
    server: LocalPostgres
    ca_file: Path
    other_ca_file: Path

    def url(self, dbname: str, ca_file: Path | None = None, scheme: str = "postgresql") -> str:
        """verify-full URL of ``dbname`` trusting ``ca_file`` (default: the server's CA)."""
        return (f"{scheme}://postgres@127.0.0.1:{self.server.port}/{dbname}"
                f"?sslmode=verify-full&sslrootcert={ca_file or self.ca_file}")


@pytest.fixture(scope="module")
def tls_server(pg_plain: LocalPostgres) -> Iterator[TlsServer]:
    """A PostgreSQL (the binaries of ``pg_plain``) with ssl=on and a certificate of a generated
    CA, accepting TCP connections over TLS only; databases ``tickvault`` and ``dagster``."""
    base = Path(tempfile.mkdtemp(prefix="tickvault-tls-"))
    base.chmod(0o755)   # the postgres user (server's user when we are root) must enter it
    try:
        ca_key, ca_cert = make_ca("tickvault test CA")
        key, cert = make_server_cert(ca_key, ca_cert, ("localhost", "127.0.0.1"))
        (base / "ca.crt").write_bytes(pem(ca_cert))
        (base / "other-ca.crt").write_bytes(pem(make_ca("some other CA")[1]))
        (base / "server.crt").write_bytes(pem(cert))
        (base / "server.key").write_bytes(key_pem(key))
        (base / "server.key").chmod(0o600)   # PostgreSQL refuses a key others can read
        (base / "pg_hba.conf").write_text(
            "local    all  all                trust\n"
            "hostssl  all  all  127.0.0.1/32  trust\n")   # TCP: TLS only
        server = LocalPostgres(base / "pg", timescaledb=False, bindir=pg_plain.bindir, durable=False,
                               settings={"ssl": "on", "ssl_cert_file": str(base / "server.crt"),
                                         "ssl_key_file": str(base / "server.key"),
                                         "hba_file": str(base / "pg_hba.conf")})
        if server.server_user is not None:
            for name in ("server.crt", "server.key", "pg_hba.conf"):
                shutil.chown(base / name, server.server_user, server.server_user)
        server.start()
        try:
            server.create_database("tickvault")
            server.create_database("dagster")
            yield TlsServer(server, base / "ca.crt", base / "other-ca.crt")
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _ssl_in_use(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]


def test_plain_tcp_is_refused(tls_server: TlsServer) -> None:
    """The server takes TCP connections over TLS only: success below means TLS was used."""
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{tls_server.server.port}/tickvault"
                        "?sslmode=disable", connect_timeout=10)


def test_verify_full_for_migrations_collector_psycopg_export_and_dagster(
        tls_server: TlsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = tls_server.url("tickvault")

    # migrations (tickvault migrate): yoyo's psycopg backend, then psycopg
    report = migrate(url)
    assert report.applied[0] == "0001.core" and report.timescaledb_version is None

    # the collector's writer (asyncpg pool); the same URL serves its LISTEN connection
    async def collect() -> tuple[int, bool]:
        writer = BatchWriter(url, venue="deribit")
        await writer.open()
        try:
            written = await writer.write(QUOTES, [_quote(i) for i in range(100)])
            async with writer.pool.acquire() as conn:
                tls = await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return written, tls
        finally:
            await writer.close()

    assert asyncio.run(collect()) == (100, True)

    # psycopg, as Dagster's DatabaseResource and orchestration/lib use it
    with DatabaseResource(url=url).connect() as conn:
        assert _ssl_in_use(conn)
        assert conn.execute("SELECT count(*) FROM quotes").fetchone()[0] == 100

    # the nightly export: ADBC (libpq) streams the day, psycopg counts and records the manifest
    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cur.fetchone() == (True,)
    store = ex.LocalStore(tmp_path / "archive")
    [partition] = ex.export_table_day(url, store, "tickvault", "quotes", DAY)
    assert (partition.venue, partition.rows) == ("deribit", 100)
    outcomes = ex.verify_export(url, store, "quotes", DAY)
    assert all(o.passed for o in outcomes.values()), outcomes

    # Dagster's run/event/schedule storage (dagster-postgres) from the repo's dagster.yaml
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "orchestration" / "dagster.yaml", home / "dagster.yaml")
    assert yaml.safe_load((home / "dagster.yaml").read_text())["storage"]["postgres"] == {
        "postgres_url": {"env": "DAGSTER_PG_URL"}}
    monkeypatch.setenv("DAGSTER_PG_URL", tls_server.url("dagster", scheme="postgresql+psycopg2"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs() == []
    with psycopg.connect(tls_server.url("dagster")) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"runs", "event_logs", "jobs"} <= tables


def test_a_server_certificate_from_another_ca_is_refused(tls_server: TlsServer) -> None:
    url = tls_server.url("tickvault", tls_server.other_ca_file)

    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(url, connect_timeout=10)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        migrate(url)
    with pytest.raises(adbc.Error, match="certificate verify failed"):
        adbc.connect(url).close()

    async def open_writer() -> None:
        writer = BatchWriter(url, venue="deribit")
        try:
            # not a transient error: raised at once, not retried as "database unavailable"
            await asyncio.wait_for(writer.open(), timeout=30)
        finally:
            await writer.close()

    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        asyncio.run(open_writer())


def test_collect_with_the_wrong_ca_stops_at_once_naming_the_cause(
        tls_server: TlsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)   # no .env of the checkout
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", tls_server.url("tickvault", tls_server.other_ca_file))
    monkeypatch.setenv("TICKVAULT_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("TICKVAULT_METRICS_PORT", "")
    assert cli.main(["collect"]) == 2
    err = capsys.readouterr().err
    assert "the database server's TLS certificate failed verification (unable to get local issuer " \
           "certificate): check sslrootcert (the CA file) and the host name in TICKVAULT_DATABASE_URL" in err

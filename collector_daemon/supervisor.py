"""``tickvault run``: the whole platform in one command (``scripts/run`` execs it).

On the project-local PostgreSQL in ``<data-dir>/pg`` (``TICKVAULT_DATABASE_URL`` unset) or on the
server ``TICKVAULT_DATABASE_URL`` names:

1. databases: ``tickvault`` (live) or ``tickvault_replay`` (``--replay``: never the live one),
   and Dagster's own ``dagster`` / ``dagster_replay`` (dagster-postgres run, event and schedule
   storage), created when missing; the schema migrated;
2. ``DAGSTER_HOME`` = ``<data-dir>/dagster`` (``dagster-replay``): ``dagster.yaml`` copied from
   ``orchestration/dagster.yaml`` at every start, a ``workspace.yaml`` naming the gRPC server,
   and ``env`` (the variables a ``dagster`` command needs to reach this instance, for
   ``set -a; . .data/dagster/env``);
3. processes, each in its own session (a Ctrl-C in the terminal reaches this supervisor only,
   which stops them in order): one ``tickvault collect`` per venue in ``TICKVAULT_VENUES``
   (default ``TICKVAULT_VENUE``, deribit), or one replaying ``--replay CAPTURE``; the Dagster
   user-code gRPC server (``dagster api grpc``), ``dagster-webserver`` and ``dagster-daemon``.
   Collectors log to the terminal, Dagster's processes to ``<data-dir>/logs/dagster-*.log``.

Stop: SIGINT or SIGTERM sends SIGTERM to every process group at once; the collector flushes (or
spools) and exits within its own budget (``collector_daemon.daemon``); whatever still runs after
``STOP_GRACE_S`` is killed (SIGKILL) and named in the log. A live collector that exits by itself
stops the platform (exit 1); a replay's collector ending leaves Dagster up until the stop.

Why not ``dagster dev`` / ``dg dev``: they start the same three Dagster processes but own their
shutdown (``dagster dev`` waits for each child in turn), need a ``dg`` project layout (``dg``,
package dagster-dg-cli, is not a dependency), and run next to no collector; here one supervisor
stops everything within 5 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("tickvault.run")

#: Seconds the processes get after SIGTERM before they are killed (the collector needs < 5).
STOP_GRACE_S = 4.5
#: Seconds to wait for the Dagster webserver to answer at start.
UI_START_TIMEOUT_S = 180.0
#: The Dagster instance template (copied into DAGSTER_HOME at each start).
DAGSTER_YAML = Path(__file__).resolve().parents[1] / "orchestration" / "dagster.yaml"
LOCATION_NAME = "tickvault"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``tickvault run`` options (the ``collect`` options are added by the caller)."""
    parser.add_argument("--data-dir", type=Path, default=Path(".data"),
                        help="where the local database, DAGSTER_HOME, logs and spool live (default .data)")
    parser.add_argument("--ui-host", default="127.0.0.1", help="Dagster webserver host (default 127.0.0.1)")
    parser.add_argument("--ui-port", type=int, default=3000,
                        help="Dagster webserver port (default 3000; 0 = any free port)")


@dataclass
class Child:
    """One supervised process: its name, command, log file (None: the terminal)."""

    name: str
    argv: list[str]
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    expected_exit: bool = False       # a replay's collector ends by itself
    reported: bool = False            # its exit was logged


class ProcessGroup:
    """Child processes, each started in a session of its own (a signal reaches it from
    :meth:`stop` only, never from the terminal) and stopped together. Used by ``tickvault run``
    (collectors and Dagster) and by the collector's worker supervisor
    (:mod:`collector_daemon.workers`)."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def add(self, child: Child, extra_env: dict[str, str] | None = None) -> None:
        """Start ``child`` (see :meth:`start`) and keep it in the group."""
        self.start(child, extra_env)
        self.children.append(child)

    def start(self, child: Child, extra_env: dict[str, str] | None = None) -> None:
        """(Re)start ``child`` in a session of its own, environment = this process's plus
        ``extra_env``, output to its log file or, without one, to this terminal.

        Raises:
            OSError: the command cannot be executed.
        """
        out = open(child.log_path, "ab") if child.log_path else None   # noqa: SIM115 - child owns it
        try:
            child.process = subprocess.Popen(
                child.argv, env={**os.environ, **(extra_env or {})}, stdout=out,
                stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
                start_new_session=True)
        finally:
            if out is not None:
                out.close()
        child.reported = False
        log.info("started %s (pid %d)%s", child.name, child.process.pid,
                 f", log {child.log_path}" if child.log_path else ", logging here")

    def stop(self, grace_s: float = STOP_GRACE_S) -> dict[str, int | None]:
        """SIGTERM every process group at once, wait up to ``grace_s``, SIGKILL what is left.

        Returns: name -> exit code (negative: the signal that ended it; None: never started).
        """
        started = time.monotonic()
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            log.info("stopping %s (pid %d)", child.name, child.process.pid)
            _signal_group(child.process, signal.SIGTERM)
        deadline = started + grace_s
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.1f s: killing it", child.name, grace_s)
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
        for child in running:   # helpers a process group may have left behind (run workers)
            _signal_group(child.process, signal.SIGKILL)
        log.info("stopped everything in %.1f s", time.monotonic() - started)
        return {c.name: c.process.returncode if c.process else None for c in self.children}


@dataclass
class Platform:
    """What ``tickvault run`` started (filled by :func:`start`)."""

    database_url: str
    dagster_pg_url: str
    dagster_home: Path
    ui_url: str
    logs: Path
    processes: ProcessGroup = field(default_factory=ProcessGroup)

    @property
    def children(self) -> list[Child]:
        """The processes started, in order."""
        return self.processes.children

    def add(self, child: Child, extra_env: dict[str, str] | None = None) -> None:
        """Start ``child`` (:meth:`ProcessGroup.add`)."""
        self.processes.add(child, extra_env)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _with_dbname(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


def _ensure_database(server_dsn: str, dbname: str) -> str:
    """Create ``dbname`` on the server of ``server_dsn`` unless it exists; returns its DSN.

    Raises:
        psycopg.Error: the server cannot be reached, or the role may not create databases.
    """
    import psycopg
    from psycopg import sql
    with psycopg.connect(server_dsn, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return _with_dbname(server_dsn, dbname)


def databases(data_dir: Path, replay: bool) -> tuple[str, str]:
    """``(TICKVAULT_DATABASE_URL, DAGSTER_PG_URL)`` of this run, databases created.

    Without ``TICKVAULT_DATABASE_URL`` the local server in ``<data_dir>/pg`` is started (or
    adopted). A replay records into ``<db>_replay`` and keeps Dagster in ``dagster_replay``;
    ``DAGSTER_PG_URL`` when set is used as given. The Dagster URL names the psycopg2 driver
    (dagster-postgres ships psycopg2 only).
    """
    suffix = "_replay" if replay else ""
    given = os.environ.get("TICKVAULT_DATABASE_URL")
    if given:
        live_db = urlsplit(given).path.lstrip("/") or "tickvault"
        url = _ensure_database(given, live_db + suffix) if replay else given
        server = given
    else:
        from collector_daemon.storage.localdb import LocalPostgres
        local = LocalPostgres(data_dir / "pg").start()
        log.info("local PostgreSQL in %s on port %d (%s)", local.datadir, local.port,
                 "TimescaleDB" if local.timescaledb_loaded else "plain PostgreSQL")
        url = local.create_database("tickvault" + suffix)
        server = url
    dagster = os.environ.get("DAGSTER_PG_URL") or _ensure_database(server, "dagster" + suffix)
    if dagster.startswith("postgresql://"):
        dagster = "postgresql+psycopg2://" + dagster[len("postgresql://"):]
    return url, dagster


def write_dagster_home(home: Path, grpc_port: int) -> None:
    """``dagster.yaml`` (from the template), ``workspace.yaml`` (the gRPC server) in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DAGSTER_YAML, home / "dagster.yaml")
    (home / "workspace.yaml").write_text(
        "# Written by `tickvault run` at each start: the user-code gRPC server it runs.\n"
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {grpc_port}\n      location_name: {LOCATION_NAME}\n")


def _venues(args: argparse.Namespace) -> list[str]:
    if args.venue:
        return [args.venue]
    names = os.environ.get("TICKVAULT_VENUES") or os.environ.get("TICKVAULT_VENUE") or "deribit"
    return [v.strip() for v in names.split(",") if v.strip()]


def _bin(name: str) -> str:
    """A console script of this environment (next to the running Python)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def start(args: argparse.Namespace, collect_argv: list[str], stopping: threading.Event) -> Platform:
    """Prepare databases and DAGSTER_HOME, then start every process (see the module doc).

    ``collect_argv``: the ``tickvault collect`` options given to ``run`` (passed through).
    ``stopping``: set by a signal; start-up returns early (what was started is in the result).

    Raises:
        psycopg.Error / LocalPostgresError: the database server cannot be started or reached.
        FileNotFoundError: the capture of ``--replay`` does not exist.
    """
    from collector_daemon.settings import load_settings
    from collector_daemon.storage.migrate import migrate

    replay = args.replay is not None
    if replay and not args.replay.exists():
        raise FileNotFoundError(f"--replay: no such capture: {args.replay}")
    data_dir = args.data_dir.absolute()
    url, dagster_pg = databases(data_dir, replay)
    os.environ["TICKVAULT_DATABASE_URL"] = url
    log.info("recording into %s", _public(url))
    report = migrate(load_settings().database_url.get_secret_value())
    log.info("schema: %d migration(s) applied", len(report.applied))

    home = data_dir / ("dagster-replay" if replay else "dagster")
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    grpc_port = _free_port()
    ui_port = args.ui_port or _free_port(args.ui_host)
    write_dagster_home(home, grpc_port)
    venues = [args.venue or os.environ.get("TICKVAULT_VENUE") or "deribit"] if replay else _venues(args)
    env = {"TICKVAULT_DATABASE_URL": url, "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": dagster_pg,
           "TICKVAULT_VENUES": os.environ.get("TICKVAULT_VENUES") or ",".join(venues)}
    (home / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (home / "env").chmod(0o600)
    os.environ.update(env)
    if replay:
        os.environ.setdefault("TICKVAULT_SPOOL_DIR", str(data_dir / "spool-replay"))
    workspace = str(home / "workspace.yaml")
    platform = Platform(url, dagster_pg, home, f"http://{args.ui_host}:{ui_port}", logs)
    collectors = []
    for venue in venues:
        argv = [sys.executable, "-m", "collector_daemon.cli", "collect", *collect_argv]
        if not args.venue:
            argv += ["--venue", venue]
        collectors.append(Child(f"collector-{venue}", argv, expected_exit=replay))
    metrics_port = os.environ.get("TICKVAULT_METRICS_PORT")
    for i, child in enumerate(collectors):
        extra = ({"TICKVAULT_METRICS_PORT": str(9108 + i)}   # one /metrics port each
                 if metrics_port is None and len(collectors) > 1 else {})
        platform.add(child, extra)
    platform.add(Child("dagster-grpc", [
        _bin("dagster"), "api", "grpc", "-m", "orchestration.definitions", "-h", "127.0.0.1",
        "-p", str(grpc_port), "--location-name", LOCATION_NAME], logs / "dagster-grpc.log"))
    # the webserver and the daemon start once the code server answers (else both log that the
    # code location is unreachable)
    log.info("waiting for the Dagster code server to load the definitions (port %d)", grpc_port)
    if not _wait_port(grpc_port, platform.children[-1], stopping, UI_START_TIMEOUT_S):
        return platform
    platform.add(Child("dagster-webserver", [
        _bin("dagster-webserver"), "-w", workspace, "-h", args.ui_host, "-p", str(ui_port)],
        logs / "dagster-webserver.log"))
    platform.add(Child("dagster-daemon", [_bin("dagster-daemon"), "run", "-w", workspace],
                       logs / "dagster-daemon.log"))
    return platform


def _wait_port(port: int, child: Child, stopping: threading.Event, timeout_s: float) -> bool:
    """Wait until 127.0.0.1:``port`` accepts connections: False when stopped, when ``child``
    exited or after ``timeout_s`` (the last two logged)."""
    deadline = time.monotonic() + timeout_s
    while not stopping.is_set():
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        if child.process.poll() is not None or time.monotonic() > deadline:
            log.error("%s did not start (see %s)", child.name, child.log_path)
            return False
        stopping.wait(0.2)
    return False


def _public(dsn: str) -> str:
    """A DSN without its password (for the log)."""
    parts = urlsplit(dsn)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def _ui_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/server_info", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(platform: Platform, grace_s: float = STOP_GRACE_S) -> dict[str, int | None]:
    """Stop every process of ``platform`` (:meth:`ProcessGroup.stop`)."""
    return platform.processes.stop(grace_s)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


#: ``tickvault run`` options that are not ``collect`` options (not passed to the collectors).
RUN_OPTIONS = ("--data-dir", "--ui-host", "--ui-port")


def collect_argv(run_argv: list[str]) -> list[str]:
    """The ``collect`` options among ``run_argv`` (the arguments after ``run``)."""
    out, skip = [], False
    for token in run_argv:
        if skip:
            skip = False
        elif token in RUN_OPTIONS:
            skip = True
        elif not token.startswith(tuple(o + "=" for o in RUN_OPTIONS)):
            out.append(token)
    return out


def main(args: argparse.Namespace, collect_argv: list[str]) -> int:
    """Run ``tickvault run``: start (see :func:`start`), print where things are, supervise until
    SIGINT/SIGTERM or a live collector's exit, then :func:`stop`. Returns the exit code: 0
    after a stop by signal, 1 when a process ended by itself unexpectedly."""
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    platform: Platform | None = None
    try:
        try:
            platform = start(args, collect_argv, stopping)
        except FileNotFoundError as exc:
            print(f"tickvault run: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            from collector_daemon.storage.localdb import LocalPostgresError
            import psycopg
            if not isinstance(exc, (LocalPostgresError, psycopg.Error)):
                raise
            print(f"tickvault run: the database could not be prepared: {exc}", file=sys.stderr)
            return 1
        print(f"tickvault run: logs of the collector(s) here; Dagster's in "
              f"{args.data_dir.absolute() / 'logs'}/dagster-{{grpc,webserver,daemon}}.log; "
              f"DAGSTER_HOME={platform.dagster_home}", file=sys.stderr, flush=True)
        code = _supervise(platform, stopping)
        if received:
            log.info("%s received: stopping everything", signal.Signals(received[0]).name)
        return code
    finally:
        if platform is not None:
            stop(platform)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(platform: Platform, stopping: threading.Event) -> int:
    ui_announced = False
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    while not stopping.wait(0.2):
        if not ui_announced:
            if _ui_answers(platform.ui_url):
                ui_announced = True
                print(f"tickvault run: Dagster UI at {platform.ui_url} (Ctrl-C stops everything)",
                      file=sys.stderr, flush=True)
            elif time.monotonic() > deadline:
                log.error("the Dagster webserver did not answer at %s within %.0f s (see %s)",
                          platform.ui_url, UI_START_TIMEOUT_S, platform.logs / "dagster-webserver.log")
                return 1
        for child in platform.children:
            code = child.process.poll()
            if code is None or child.reported:
                continue
            child.reported = True
            if child.expected_exit and code == 0:
                log.info("%s: the replay is over; Dagster stays up at %s until Ctrl-C",
                         child.name, platform.ui_url)
                continue
            log.error("%s exited by itself (code %s)%s: stopping everything", child.name, code,
                      f"; see {child.log_path}" if child.log_path else "")
            return 1
    return 0

"""Fault-suite fixtures: a private PostgreSQL a test may stop and start, subprocess helpers, an
emulator in its own process or thread, and a place to report measured figures (printed at the end
of the session; docs/reliability.md quotes them)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.storage.localdb import LocalPostgres
from collector_daemon.storage.migrate import migrate
from collector_daemon.storage.spool import Spool
from replay_helpers import CAPTURE as REPLAY_CAPTURE

FIGURES: dict[str, dict] = {}


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict:
    """A dict the test fills with what it measured."""
    return FIGURES.setdefault(request.node.name, {})


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.write_line("fault-suite figures: " + json.dumps(FIGURES, sort_keys=True, default=str))


@pytest.fixture
def own_pg(pg_timescale) -> Iterator[tuple[LocalPostgres, str]]:
    """A TimescaleDB server of this test alone (it may be stopped), with the schema applied."""
    root = Path(tempfile.mkdtemp(prefix="tv-fault-pg-"))
    root.chmod(0o755)
    server = LocalPostgres(root, timescaledb=True, durable=False).start()
    dsn = server.create_database("tickvault")
    migrate(dsn)
    try:
        yield server, dsn
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def collector_env(dsn: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TICKVAULT_DATABASE_URL": dsn, "TICKVAULT_METRICS_PORT": "",
           "TICKVAULT_SPOOL_DIR": str(tmp_path / "spool"), "TICKVAULT_BACKOFF_MIN_S": "0.05",
           "TICKVAULT_BACKOFF_MAX_S": "0.5", "TICKVAULT_STATS_INTERVAL_S": "5"}
    env.update(extra)
    return env


def tickvault(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``tickvault ARGS`` (this venv's Python) with stdout/stderr to ``log``."""
    fh = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "collector_daemon.cli", *args], env=env,
                            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def counts(dsn: str, sql: str, *args) -> list[tuple]:
    """The rows of ``sql`` (parameters ``args``) on ``dsn``, on a connection of its own."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def stop_collector(proc: subprocess.Popen, log: Path) -> None:
    """SIGTERM and expect a clean exit (everything flushed)."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, *, every: float = 0.25,
             tick: Callable[[], object] | None = None, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> Any:
    """Poll ``condition()`` every ``every`` s until it returns something truthy (returned), calling
    ``tick()`` (e.g. :meth:`RssSampler.sample`) at each poll. Waits on a condition, never on a
    fixed time, so a loaded machine only makes it slower.

    Raises:
        AssertionError: ``timeout`` s passed (naming ``what``), or ``proc`` exited meanwhile (with
            the tail of ``log``).
    """
    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            tick()
        result = condition()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"collector exited ({proc.returncode}) while waiting for {what}: "
                                 + (log.read_text()[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def spooled_rows(spool_dir: Path) -> dict[str, list[tuple]]:
    """The rows a spool directory holds, per table name (what a killed collector left for the next
    run), read from a copy so the directory itself is left as it is for that run."""
    out: dict[str, list[tuple]] = {}
    if not list(spool_dir.glob("segment-*.spool")):
        return out
    copy = Path(tempfile.mkdtemp(prefix="tv-spool-copy-")) / "spool"
    shutil.copytree(spool_dir, copy, ignore=shutil.ignore_patterns(".lock", "corrupt"))

    async def keep(table, rows: list[tuple]) -> int:
        out.setdefault(table.name, []).extend(rows)
        return len(rows)

    spool = Spool(copy)
    try:
        asyncio.run(spool.drain(keep))
    finally:
        spool.release()
        shutil.rmtree(copy.parent, ignore_errors=True)
    return out


class RssSampler:
    """Samples a process's RSS (MiB) on demand; ``peak`` over the samples taken."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []

    def sample(self) -> float:
        try:
            rss = self.proc.memory_info().rss / 2**20
        except psutil.Error:
            return 0.0
        self.samples.append((time.monotonic(), rss))
        return rss

    def peak(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((r for t, r in self.samples if since <= t <= until), default=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(url)


@contextmanager
def emulator_process(tmp_path: Path, real: Path, *args: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``tickvault emulate CAPTURE ARGS`` on a free port (its own process, so its counts survive the
    collector's); yields (stats URL, the collector's endpoint variables) and SIGTERMs it after."""
    port = free_port()
    proc = tickvault("emulate", str(real / REPLAY_CAPTURE), "--port", str(port), *args,
                     env=dict(os.environ), log=tmp_path / "emulator.log")
    stats_url = f"http://127.0.0.1:{port}/emulator/stats"
    try:
        wait_http(stats_url)
        yield stats_url, {"TICKVAULT_DERIBIT_WS_URL": f"ws://127.0.0.1:{port}/ws/api/v2",
                          "TICKVAULT_DERIBIT_REST_URL": f"http://127.0.0.1:{port}/api/v2",
                          "TICKVAULT_TOP_N": "all"}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


class EmulatorThread:
    """An :class:`EmulatorServer` on an event loop of its own in a daemon thread of the test
    process, for emulations set up in Python (e.g. Bybit's accounts and private traffic, which
    ``tickvault emulate`` has no options for) beside a collector running as a subprocess: its
    counts survive the collector's death. Use :func:`emulator_thread`.

    Attributes:
        server: the running server (touch it only through :meth:`call`).
    """

    def __init__(self, config: EmulatorConfig, prepare: Callable[[EmulatorServer], None] | None) -> None:
        self._config, self._prepare = config, prepare
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: EmulatorServer | None = None
        self._thread = threading.Thread(target=self._run, name="emulator", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.server = EmulatorServer(self._config)
            if self._prepare is not None:
                self._prepare(self.server)
            self._loop.run_until_complete(self.server.start(host="127.0.0.1", port=0))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc
            return
        finally:
            self._ready.set()
        self._loop.run_forever()

    def start(self) -> "EmulatorThread":
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None or self.server is None:
            raise RuntimeError("the emulator did not start") from self._error
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30) -> Any:
        """``fn(*args)`` run on the emulator's loop (its state is not thread-safe); its result."""
        async def run() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stats(self) -> dict:
        """:meth:`EmulatorServer.stats`, taken on the emulator's loop."""
        return self.call(self.server.stats)

    def stop(self) -> None:
        if self._thread.is_alive():
            if self.server is not None:
                asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop.close()


@contextmanager
def emulator_thread(config: EmulatorConfig,
                    prepare: Callable[[EmulatorServer], None] | None = None) -> Iterator[EmulatorThread]:
    """An :class:`EmulatorThread` serving on a free loopback port; ``prepare(server)`` runs after
    the capture is loaded and before the replay starts. Stopped afterwards."""
    emu = EmulatorThread(config, prepare).start()
    try:
        yield emu
    finally:
        emu.stop()

"""Fault-suite fixtures: a private PostgreSQL a test may stop and start, subprocess helpers,
and a place to report measured figures (printed at the end of the session; docs/reliability.md
quotes them)."""

from __future__ import annotations

import json
import signal
import socket
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from collector_daemon.storage.localdb import LocalPostgres
from collector_daemon.storage.migrate import migrate
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

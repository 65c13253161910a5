"""benchmarks/peers.py cannot rot: its seed-design arm (benchmarks/seed_design.py) run end to end
on a few thousand real ticker frames, through the emulator over wss:// (fast path) into a real
TimescaleDB, counted against the emulator. The full benchmark (three arms, a million frames) is
run by hand, not by CI."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from collector_daemon.storage.localdb import LocalPostgres

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def pg_commit_ts(pg_timescale: LocalPostgres):
    """A TimescaleDB server with track_commit_timestamp=on (what peers.py measures time with)."""
    base = Path(tempfile.mkdtemp(prefix="tickvault-peers-test-"))
    base.chmod(0o755)
    server = LocalPostgres(base / "pg", timescaledb=True, durable=False,
                           settings={"track_commit_timestamp": "on"})
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_seed_arm_stores_every_frame_exactly_once(pg_commit_ts, tmp_path, real_data_dir):
    import peers  # benchmarks/peers.py

    # 7 ETH options x 14 = 98 instruments, 197 tickers each per loop, 2 loops (the second one
    # from the emulator's pre-rendered frames)
    w = peers.plan(("ETH",), 100, messages=5000, trades=None)
    assert (w.instruments, w.loops, w.loop_tickers) == (98, 2, 2758)
    args = argparse.Namespace(src=REPO, emulator_path="fast", settle=10.0, timeout=300.0)
    r = peers.run_arm(args, pg_commit_ts, w, "seed", 1, tmp_path)
    assert r["emulator_path"] == "fast" and r["connections"] == 1
    assert r["sent_tickers"] == r["stored"] == 2 * 2758
    assert r["duplicates"] == 0 and r["instruments_mismatched"] == 0 and r["exactly_once"]
    assert r["rows_per_s"] > 0 and r["client_us_per_row"] > 0 and r["pg_us_per_row"] > 0
    assert r["peak_rss_mib"] > 10
    text = peers.summary({"date": "d", "cpu": "c", "ram_gib": 1, "kernel": "k", "loadavg_at_start": (0, 0, 0),
                          "git_head": "h", "python": "3", "packages": {}, "postgresql": "15",
                          "timescaledb": "2"}, {}, w, [r])
    assert "| every notification stored exactly once | yes |" in text
    assert "8 columns" in text

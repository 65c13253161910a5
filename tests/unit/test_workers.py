"""``--workers N``: the worker shards refine the daemon's shard, and the setting is validated."""

from __future__ import annotations

import argparse
import math

import pytest

from collector_daemon.settings import SettingsError, load_settings
from collector_daemon.sharding import shard_of, worker_shard
from collector_daemon.workers import _combine, parse_worker

NAMES = [f"ETH-27DEC30-{1000 + i}-{'CP'[i % 2]}" for i in range(3000)]
DSN = "postgresql://u@127.0.0.1:5432/x"


@pytest.mark.parametrize("shard, workers", [((1, 1), 2), ((1, 1), 3), ((2, 3), 2), ((3, 3), 4)])
def test_worker_shards_are_disjoint_and_exactly_the_daemons_shard(shard, workers) -> None:
    k, n = shard
    daemon = {name for name in NAMES if shard_of(name, n) == k}
    per_worker = []
    for i in range(1, workers + 1):
        wk, wn = worker_shard(shard, i, workers)
        assert (wk, wn) == (k + n * (i - 1), n * workers)
        per_worker.append({name for name in NAMES if shard_of(name, wn) == wk})
    assert set().union(*per_worker) == daemon
    assert sum(len(s) for s in per_worker) == len(daemon)          # disjoint
    assert all(len(s) > 0.6 * len(daemon) / workers for s in per_worker)   # about even


def test_worker_shard_of_two_workers_in_the_whole_universe() -> None:
    assert worker_shard((1, 1), 1, 2) == (1, 2)
    assert worker_shard((1, 1), 2, 2) == (2, 2)
    assert worker_shard((2, 4), 3, 3) == (10, 12)
    with pytest.raises(ValueError, match="1 <= worker <= workers"):
        worker_shard((1, 1), 3, 2)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        worker_shard((5, 4), 1, 2)


@pytest.mark.parametrize("value", ["0", "-1", "two", "65"])
def test_a_bad_worker_count_fails_naming_the_variable(value, monkeypatch) -> None:
    monkeypatch.setenv("TICKVAULT_WORKERS", value)
    with pytest.raises(SettingsError, match="TICKVAULT_WORKERS"):
        load_settings(database_url=DSN)


def test_workers_share_the_connection_budget(monkeypatch) -> None:
    monkeypatch.setenv("TICKVAULT_WORKERS", "2")
    settings = load_settings(database_url=DSN)
    assert settings.workers == 2
    assert settings.per_worker() == (8, 2)        # 16 sockets and 4 REST connections, halved
    assert load_settings(database_url=DSN, workers=1).per_worker() == (16, 4)
    # Deribit: 32 connections per IP; 20 workers need at least 20 x (1 + 2 x 1) = 60
    with pytest.raises(SettingsError, match=r"TICKVAULT_WORKERS \(20\) x .* = 60 exceeds Deribit's 32"):
        load_settings(database_url=DSN, workers=20)


def test_worker_option() -> None:
    assert parse_worker("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_worker(bad)


def test_metrics_combine_sums_counts_and_takes_the_worst_of_the_rest() -> None:
    assert _combine("tickvault_messages", "counter", "tickvault_messages_total", [3, 4]) == 7
    assert _combine("tickvault_connected", "gauge", "tickvault_connected", [1, 2]) == 3
    assert _combine("tickvault_open_gaps", "gauge", "tickvault_open_gaps", [5, 5]) == 5
    assert _combine("tickvault_last_message_age_seconds", "gauge",
                    "tickvault_last_message_age_seconds", [math.nan, 0.5]) == 0.5
    assert _combine("tickvault_receive_to_commit_ms", "summary", "tickvault_receive_to_commit_ms",
                    [10.0, 30.0]) == 30.0
    assert _combine("tickvault_receive_to_commit_ms", "summary",
                    "tickvault_receive_to_commit_ms_count", [10, 30]) == 40


def test_run_passes_workers_through_to_collect() -> None:
    from collector_daemon.cli import build_parser
    from collector_daemon.supervisor import collect_argv
    argv = ["run", "--workers", "2", "--data-dir", "/tmp/x", "--top-n", "all"]
    args = build_parser().parse_args(argv)
    assert args.workers == 2 and args.worker is None
    assert collect_argv(argv[1:]) == ["--workers", "2", "--top-n", "all"]
    collect = build_parser().parse_args(["collect", *collect_argv(argv[1:])])
    assert (collect.workers, collect.top_n) == (2, "all")

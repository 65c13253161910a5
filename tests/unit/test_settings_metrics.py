"""Configuration errors name the variable; /metrics and /healthz answer over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from collector_daemon.metrics import LatencySample, MetricsServer, Stats
from collector_daemon.settings import SettingsError, load_settings


def test_missing_database_url_fails_at_start_with_its_name(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)           # no .env here
    monkeypatch.delenv("TICKVAULT_DATABASE_URL", raising=False)
    with pytest.raises(SettingsError, match="TICKVAULT_DATABASE_URL"):
        load_settings()
    proc = subprocess.run([sys.executable, "-m", "collector_daemon.cli", "collect"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "TICKVAULT_DATABASE_URL" in proc.stderr


def test_bad_values_name_their_variable(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("TICKVAULT_HEARTBEAT_S", "3")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "TICKVAULT_DATABASE_URL" in str(err.value) and "TICKVAULT_HEARTBEAT_S" in str(err.value)
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", "postgresql://u:secret@h/db")
    monkeypatch.setenv("TICKVAULT_HEARTBEAT_S", "10")
    monkeypatch.setenv("TICKVAULT_TOP_N", "all")
    s = load_settings()
    assert s.venue_settings.top_n is None and "secret" not in repr(s)      # the password never reaches logs


def test_checks_across_variables_name_them(monkeypatch, tmp_path) -> None:
    """Deribit's 32 connections per IP (WebSockets + both REST clients) and backoff bounds."""
    monkeypatch.chdir(tmp_path)
    url = "postgresql://u@h/db"
    assert load_settings(database_url=url, max_connections=24, rest_max_concurrency=4).max_connections == 24
    with pytest.raises(SettingsError) as err:
        load_settings(database_url=url, max_connections=25, rest_max_concurrency=4)
    assert "TICKVAULT_MAX_CONNECTIONS + 2 x TICKVAULT_REST_MAX_CONCURRENCY = 33" in str(err.value)
    with pytest.raises(SettingsError, match="TICKVAULT_BACKOFF_MAX_S must be >= TICKVAULT_BACKOFF_MIN_S"):
        load_settings(database_url=url, backoff_min_s=10, backoff_max_s=5)


def test_latency_sample_percentiles() -> None:
    sample = LatencySample(capacity=1000, seed=1)
    sample.add_many([float(i) for i in range(1, 101)])
    assert sample.percentile(0.5) == 50.0 and sample.percentile(0.99) == 99.0
    sample.add_many([1.0] * 100_000)
    assert len(sample.values) == 1000 and sample.seen == 100_100


def test_metrics_and_healthz_over_http() -> None:
    stats = Stats(venue="deribit", messages=42, rejected=3)
    stats.rows_written["quotes"] = 40
    stats.commit_latency.add_many([float(ms) for ms in range(1, 201)])  # 1..200 ms
    healthy = {"ok": True}
    server = MetricsServer(stats, lambda: (healthy["ok"], {"connected": 1}), port=0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        text = httpx.get(f"{base}/metrics").text
        assert 'tickvault_messages_total{venue="deribit"} 42.0' in text
        assert 'tickvault_rejected_messages_total{venue="deribit"} 3.0' in text
        assert 'tickvault_rows_written_total{table="quotes",venue="deribit"} 40.0' in text
        assert 'tickvault_receive_to_commit_ms{quantile="0.99",venue="deribit"} 198.0' in text
        assert 'tickvault_receive_to_commit_ms{quantile="0.5",venue="deribit"} 100.0' in text
        assert 'tickvault_receive_to_commit_ms_count{venue="deribit"} 200.0' in text
        assert 'tickvault_exchange_to_receive_ms{quantile="0.99",venue="deribit"} NaN' in text  # empty
        assert httpx.get(f"{base}/healthz").status_code == 200
        healthy["ok"] = False
        r = httpx.get(f"{base}/healthz")
        assert r.status_code == 503 and r.json() == {"connected": 1}
    finally:
        server.stop()


def test_an_unknown_venue_fails_at_start_with_the_known_ones(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", "postgresql://u@h/db")
    with pytest.raises(SettingsError, match="TICKVAULT_VENUE: unknown venue 'nope'; known venues: bybit, deribit, kraken"):
        load_settings(venue="nope")
    proc = subprocess.run([sys.executable, "-m", "collector_daemon.cli", "collect", "--venue", "nope"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TICKVAULT_DATABASE_URL": "postgresql://u@h/db"})
    assert proc.returncode == 2 and "known venues: bybit, deribit, kraken" in proc.stderr, proc.stderr


def test_venue_settings_have_their_own_prefix_and_the_old_names(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TICKVAULT_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("TICKVAULT_DERIBIT_CURRENCY", "BTC")
    monkeypatch.setenv("TICKVAULT_DERIBIT_HISTORY_URL", "https://history.example/api/v2")
    s = load_settings()
    assert (s.venue, s.venue_settings.currencies, s.venue_settings.history_url) == (
        "deribit", ("BTC",), "https://history.example/api/v2")
    monkeypatch.delenv("TICKVAULT_DERIBIT_CURRENCY")
    monkeypatch.setenv("TICKVAULT_CURRENCY", "ETH,BTC")       # the name before venues existed
    assert load_settings().venue_settings.currencies == ("ETH", "BTC")
    with pytest.raises(SettingsError, match="unknown setting 'no_such_thing'"):
        load_settings(no_such_thing=1)


def test_secrets_can_come_from_files(monkeypatch, tmp_path) -> None:
    """Docker secrets: TICKVAULT_<NAME>_FILE holds the value; an unreadable file names its
    variable and path, never a value."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TICKVAULT_DATABASE_URL", raising=False)
    secret = tmp_path / "database_url"
    secret.write_text("postgresql://tickvault:s3cr3t@db:5432/tickvault\n")
    monkeypatch.setenv("TICKVAULT_DATABASE_URL_FILE", str(secret))
    try:
        s = load_settings()
        assert s.database_url.get_secret_value() == "postgresql://tickvault:s3cr3t@db:5432/tickvault"
        assert "s3cr3t" not in repr(s)
    finally:
        os.environ.pop("TICKVAULT_DATABASE_URL", None)   # set by load_settings, not monkeypatch
    monkeypatch.setenv("TICKVAULT_DATABASE_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="TICKVAULT_DATABASE_URL_FILE: cannot read .*missing"):
        load_settings()

"""The Prometheus configuration and alert rules of the stack (deploy/prometheus) pass promtool:
``promtool check config`` (the scrape config and the rule files it names), ``promtool check
rules`` and the rules' unit tests (``promtool test rules alerts_test.yml``: every alert fires
when, and only when, it should, with its rendered summary and description).

promtool comes from Debian's ``prometheus`` package (``apt-get install prometheus``); without it
the tests skip locally and fail in CI.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool(executable: Callable[[str, str], str]) -> str:
    return executable("promtool", "apt-get install prometheus (Debian's package has promtool)")


def run_promtool(promtool: str, *args: str) -> str:
    """Run promtool in deploy/prometheus (relative rule paths resolve there); its output, or a
    test failure showing it."""
    done = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                          timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_config_is_valid(promtool: str) -> None:
    out = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out and "is valid prometheus config" in out


def test_rules_are_valid(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", "alerts.yml")
    assert "SUCCESS: 9 rules found" in out


def test_rules_unit_tests_pass(promtool: str) -> None:
    out = run_promtool(promtool, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out and "FAILED" not in out


def test_every_alert_is_unit_tested() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    firing = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == firing, f"alerts never shown firing in alerts_test.yml: {sorted(alerts - firing)}"

"""Reconnect backoff (collector_daemon.connection.backoff_delay): "capped exponential backoff with
jitter (1 s to 60 s)" -- every delay within the bounds, doubling, jittered at every step."""

from __future__ import annotations

import random
import statistics

import pytest

from collector_daemon.connection import backoff_delay


@pytest.mark.parametrize("low, high", [(1.0, 60.0), (0.05, 0.5), (2.0, 3.0), (5.0, 5.0)])
def test_every_delay_lies_within_the_bounds(low, high):
    rng = random.Random(42)
    for attempt in range(200):
        for _ in range(50):
            assert low <= backoff_delay(attempt, low, high, rng) <= high, attempt


def test_default_schedule_doubles_to_the_cap_with_jitter():
    rng = random.Random(7)
    draws = {k: [backoff_delay(k, 1.0, 60.0, rng) for _ in range(2000)] for k in range(10)}
    # attempt k draws from [2^k, 2^(k+1)] until the cap, then from [30, 60]
    for k, ranges in enumerate([(1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (30, 60), (30, 60), (30, 60)]):
        lo, hi = ranges
        d = draws[k]
        assert lo <= min(d) and max(d) <= hi, k
        # jittered over the whole range (not a constant), centred in it
        assert min(d) < lo + 0.05 * (hi - lo) and max(d) > hi - 0.05 * (hi - lo), k
        assert statistics.mean(d) == pytest.approx((lo + hi) / 2, rel=0.05), k
    assert draws[0][0] != draws[0][1]
    # the first reconnect never comes sooner than the minimum (it used to be 0.5 s)
    assert min(draws[0]) >= 1.0


def test_huge_attempt_numbers_stay_capped():
    assert 30.0 <= backoff_delay(10_000, 1.0, 60.0) <= 60.0


@pytest.mark.parametrize("attempt, low, high", [(0, 0.0, 1.0), (0, 2.0, 1.0), (-1, 1.0, 60.0)])
def test_bad_bounds_raise(attempt, low, high):
    with pytest.raises(ValueError):
        backoff_delay(attempt, low, high)

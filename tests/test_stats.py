"""Paired statistics against values computed by hand or independently."""

import math

import numpy as np
import pytest

from slingshot.stats import (
    bootstrap_ci,
    bootstrap_indices,
    mcnemar_exact,
    mean_ci,
    paired_bootstrap_p,
    percentiles_ms,
)


def test_mcnemar_exact_on_a_hand_made_table():
    # 10 examples both right, 1 only A right, 9 only B right, 2 both wrong
    a = np.array([1] * 10 + [1] * 1 + [0] * 9 + [0] * 2, dtype=bool)
    b = np.array([1] * 10 + [0] * 1 + [1] * 9 + [0] * 2, dtype=bool)
    test = mcnemar_exact(a, b)
    assert (test.only_a_correct, test.only_b_correct) == (1, 9)
    # two-sided binomial: 2 * P(X <= 1 | n=10, p=1/2) = 2 * (1 + 10) / 1024
    assert test.p_value == pytest.approx(2 * 11 / 1024)


def test_mcnemar_is_symmetric_and_one_without_discordant_pairs():
    a = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    b = np.array([1, 0, 1, 0, 1, 1], dtype=bool)
    assert mcnemar_exact(a, b).p_value == pytest.approx(mcnemar_exact(b, a).p_value)
    assert mcnemar_exact(a, a).p_value == 1.0
    # b = 1, c = 2: 2 * P(X <= 1 | n=3) = 2 * 4/8 = 1.0
    assert mcnemar_exact(a, b).p_value == pytest.approx(1.0)


def test_mean_ci_is_the_percentile_interval_of_the_resampled_means():
    rng = np.random.default_rng(0)
    scores = (rng.random(200) < 0.8).astype(float)
    indices = bootstrap_indices(200, 500, seed=3)
    low, high = mean_ci(scores, indices, 0.95)
    means = sorted(scores[row].mean() for row in indices)
    assert low == pytest.approx(np.percentile(means, 2.5)) and high == pytest.approx(np.percentile(means, 97.5))
    assert low < scores.mean() < high
    # close to the normal approximation of a proportion's interval
    half_width = 1.96 * math.sqrt(scores.mean() * (1 - scores.mean()) / 200)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.2)


def test_bootstrap_is_reproducible_with_a_seed():
    assert np.array_equal(bootstrap_indices(50, 10, seed=1), bootstrap_indices(50, 10, seed=1))
    values = np.arange(50, dtype=float)
    metric = lambda rows: float(np.median(values[rows]))
    assert bootstrap_ci(metric, bootstrap_indices(50, 200, 7)) == bootstrap_ci(metric, bootstrap_indices(50, 200, 7))


def test_paired_bootstrap_p_value():
    gold = np.zeros(100)
    good = np.full(100, 0.1)
    bad = np.full(100, 0.9)
    indices = bootstrap_indices(100, 1000, seed=0)

    def rmse(values):
        return lambda rows: float(np.sqrt(np.mean((values[rows] - gold[rows]) ** 2)))

    p_value, difference = paired_bootstrap_p(rmse(bad), rmse(good), indices)
    assert difference == pytest.approx(0.8) and p_value == pytest.approx(1 / 1000)  # floored at 1 / samples
    assert paired_bootstrap_p(rmse(good), rmse(good), indices) == (1.0, 0.0)
    noisy_a = np.random.default_rng(1).normal(0, 1, 100)
    noisy_b = np.random.default_rng(2).normal(0, 1, 100)
    assert paired_bootstrap_p(rmse(noisy_a), rmse(noisy_b), indices)[0] > 0.05


def test_latency_percentiles_in_milliseconds():
    assert percentiles_ms([0.001] * 9 + [0.1]) == {"p50_ms": pytest.approx(1.0), "p95_ms": pytest.approx(55.45)}
    assert percentiles_ms([]) == {"p50_ms": None, "p95_ms": None}

"""Paired statistics for comparing systems on the same examples: bootstrap intervals, McNemar, paired bootstrap.

Pure functions of arrays; `compare.py` feeds them predictions. Conventions: `confidence` is two-sided (0.95 gives
the 2.5th and 97.5th percentiles), resampling is seeded so a rerun reproduces the same interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest


def bootstrap_indices(count: int, samples: int, seed: int) -> np.ndarray:
    """(samples, count) row indices drawn with replacement; the same draws serve every system (paired)."""
    return np.random.default_rng(seed).integers(0, count, size=(samples, count))


def bootstrap_ci(
    metric: Callable[[np.ndarray], float], indices: np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of `metric(rows)` over the bootstrap resamples in `indices` (samples, count)."""
    values = np.array([metric(rows) for rows in indices])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci(per_example: np.ndarray, indices: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the mean of a per-example score (accuracy from 0/1 correctness); vectorised."""
    values = per_example[indices].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test on paired correctness: b = only A right, c = only B right."""

    only_a_correct: int
    only_b_correct: int
    p_value: float


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """Two-sided exact McNemar test: a binomial test of b against b + c discordant pairs at p = 1/2.

    The exact form is right for the small discordant counts of a few hundred evaluation examples, where the
    chi-squared approximation is poor (Edwards 1948; Fagerland et al., BMC Med Res Methodol 2013).
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return McNemar(only_a, only_b, 1.0)
    p_value = binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    return McNemar(only_a, only_b, float(min(1.0, p_value)))


def paired_bootstrap_p(
    metric_a: Callable[[np.ndarray], float], metric_b: Callable[[np.ndarray], float], indices: np.ndarray
) -> tuple[float, float]:
    """Two-sided p-value that A and B score the same, and the observed difference A − B.

    The p-value is twice the share of resamples on the far side of zero from the observed difference
    (the percentile paired bootstrap of Koehn 2004), floored at 1 / samples.
    """
    everything = np.arange(indices.shape[1])
    observed = metric_a(everything) - metric_b(everything)
    differences = np.array([metric_a(rows) - metric_b(rows) for rows in indices])
    if observed == 0:
        return 1.0, 0.0
    beyond = np.mean(differences <= 0) if observed > 0 else np.mean(differences >= 0)
    return float(min(1.0, max(2 * beyond, 1 / len(indices)))), float(observed)


def percentiles_ms(latencies_s: list[float] | np.ndarray) -> dict[str, float | None]:
    """p50 and p95 of latencies in milliseconds (None when nothing was timed)."""
    if len(latencies_s) == 0:
        return {"p50_ms": None, "p95_ms": None}
    p50, p95 = np.percentile(np.asarray(latencies_s) * 1000, [50, 95])
    return {"p50_ms": float(p50), "p95_ms": float(p95)}

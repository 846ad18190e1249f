"""Paired statistics for before/after on one test set.

Both models answered the same samples, so every test is paired:
- a binary metric (parsed / not parsed) → McNemar's test on the discordant pairs, exact (binomial) p-value:
  ```
                     candidate ok   candidate fail
  baseline ok             a              b          b = got worse, c = got better
  baseline fail           c              d          p = P(|X - n/2| >= |b - n/2|), X ~ Binomial(b + c, 1/2)
  ```
- a rate or accuracy → percentile bootstrap confidence interval of the mean difference, resampling samples
  (pairs) with a fixed seed, so a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
SEED = 0


def mcnemar(baseline: Sequence[bool], candidate: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test on paired binary outcomes (True = pass)."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired outcomes differ in length: {len(baseline)} vs {len(candidate)}")
    worse = sum(1 for a, b in zip(baseline, candidate) if a and not b)
    better = sum(1 for a, b in zip(baseline, candidate) if b and not a)
    return mcnemar_from_counts(worse, better)


def mcnemar_from_counts(b: int, c: int) -> dict[str, Any]:
    """Exact two-sided McNemar p-value for discordant counts b (pass→fail) and c (fail→pass).

    The chi-square statistic with continuity correction is reported beside it for readers who know that form.
    """
    from scipy.stats import binomtest

    n = b + c
    p_value = 1.0 if n == 0 else float(binomtest(b, n, 0.5).pvalue)
    chi2 = 0.0 if n == 0 else (abs(b - c) - 1) ** 2 / n
    return {"worse": b, "better": c, "discordant": n, "p_value": min(1.0, p_value), "chi2_corrected": chi2,
            "method": "exact binomial"}


def bootstrap_mean_ci(values: Sequence[float], alpha: float = 0.05, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = SEED) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of a mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None, None
    if data.size == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_delta(baseline: Sequence[float], candidate: Sequence[float], alpha: float = 0.05,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """Mean of candidate − baseline over pairs, with its percentile bootstrap interval."""
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(candidate, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        return {"n": 0, "baseline": None, "candidate": None, "delta": None, "ci_low": None, "ci_high": None}
    low, high = bootstrap_mean_ci(b - a, alpha, resamples, seed)
    return {"n": int(a.size), "baseline": float(a.mean()), "candidate": float(b.mean()), "delta": float((b - a).mean()),
            "ci_low": low, "ci_high": high}


def compare_binary(baseline: Sequence[bool], candidate: Sequence[bool], alpha: float = 0.05) -> dict[str, Any]:
    """Rates, their paired delta with a bootstrap interval, McNemar, and a verdict: better | worse | no change."""
    result = paired_delta([float(x) for x in baseline], [float(x) for x in candidate], alpha)
    test = mcnemar(baseline, candidate)
    result.update(test)
    significant = test["p_value"] < alpha
    result["significant"] = significant
    result["verdict"] = ("worse" if test["worse"] > test["better"] else "better") if significant else "no change"
    return result


def compare_scores(baseline: Sequence[float], candidate: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """A paired delta of per-sample scores; significant when its interval leaves zero."""
    result = paired_delta(baseline, candidate, alpha)
    if result["n"] == 0:
        result.update(significant=False, verdict="no data")
        return result
    significant = result["ci_low"] > 0 or result["ci_high"] < 0
    result["significant"] = significant
    result["verdict"] = ("better" if result["delta"] > 0 else "worse") if significant else "no change"
    return result

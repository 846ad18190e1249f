"""Paired statistics: McNemar against known tables, bootstrap intervals that cover the truth."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from tuneloop.eval.stats import bootstrap_mean_ci, compare_binary, compare_scores, mcnemar, mcnemar_from_counts, paired_delta


def exact_two_sided(b: int, c: int) -> float:
    """The exact McNemar p-value summed by hand: 2 · P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    return min(1.0, 2 * sum(comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)


def test_mcnemar_small_table_matches_the_hand_computed_value():
    # 1 pair got worse, 6 got better: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16 / 128
    assert mcnemar_from_counts(1, 6)["p_value"] == pytest.approx(0.125)


@pytest.mark.parametrize("table", [
    [[101, 121], [59, 33]],   # Wikipedia's McNemar example
    [[794, 86], [150, 570]],  # the statsmodels documentation example (Agresti)
])
def test_mcnemar_exact_equals_the_binomial_sum_of_the_discordant_cells(table):
    (_a, b), (c, _d) = table
    result = mcnemar_from_counts(b, c)
    assert result["p_value"] == pytest.approx(exact_two_sided(b, c), rel=1e-9)
    assert result["p_value"] < 0.001


def test_mcnemar_reports_the_corrected_chi_square_of_the_published_example():
    # Wikipedia: b = 121, c = 59 → chi² with continuity correction = (|121 - 59| - 1)² / 180 = 20.67
    assert mcnemar_from_counts(121, 59)["chi2_corrected"] == pytest.approx(20.672, abs=1e-3)


def test_mcnemar_counts_discordant_pairs_from_outcomes():
    baseline = [True, True, True, False, False, True]
    candidate = [True, False, False, True, False, True]
    result = mcnemar(baseline, candidate)
    assert (result["worse"], result["better"]) == (2, 1)
    assert result["p_value"] == pytest.approx(1.0)
    assert mcnemar([True], [True])["p_value"] == 1.0


def test_mcnemar_refuses_unpaired_outcomes():
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar([True, False], [True])


def test_a_clear_regression_is_significant_and_named_worse():
    baseline = [True] * 40
    candidate = [True] * 25 + [False] * 15
    result = compare_binary(baseline, candidate)
    assert result["verdict"] == "worse" and result["significant"]
    assert result["delta"] == pytest.approx(-15 / 40)
    assert result["ci_high"] < 0


def test_a_small_change_is_no_change():
    baseline = [True, False] * 20
    candidate = [True, False] * 19 + [True, True]
    assert compare_binary(baseline, candidate)["verdict"] == "no change"


def test_bootstrap_interval_covers_the_true_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    values = rng.normal(0.3, 1.0, size=400)
    low, high = bootstrap_mean_ci(values)
    assert low < 0.3 < high
    assert (low, high) == bootstrap_mean_ci(values)
    assert high - low == pytest.approx(2 * 1.96 / 20, rel=0.25)  # about 2·1.96·σ/√n


def test_paired_delta_of_field_accuracy():
    baseline = [0.5, 0.5, 1.0, 0.0, 0.75] * 10
    candidate = [1.0, 0.5, 1.0, 0.5, 1.0] * 10
    result = paired_delta(baseline, candidate)
    assert result["delta"] == pytest.approx(0.25)
    assert 0 < result["ci_low"] <= 0.25 <= result["ci_high"]
    assert compare_scores(baseline, candidate)["verdict"] == "better"


def test_no_pairs_means_no_data_not_a_verdict():
    assert compare_scores([], [])["verdict"] == "no data"

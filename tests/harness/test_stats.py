"""Paired tests, Holm, effect size and CIs against hand computations and exhaustive enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from harness import stats


def _t_two_sided_p_df2(t: float) -> float:
    """Two-sided p of Student's t with 2 degrees of freedom: CDF(t) = 1/2 + t / (2 sqrt(t^2 + 2))."""
    return 1.0 - abs(t) / math.sqrt(t * t + 2.0)


def _t_quantile_df2(q: float) -> float:
    """Quantile of Student's t with 2 degrees of freedom: (2q - 1) / sqrt(2 q (1 - q))."""
    return (2.0 * q - 1.0) / math.sqrt(2.0 * q * (1.0 - q))


def test_t_test_matches_hand_computation():
    # Differences 1, 2, 3: mean 2, sd 1, so t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 df.
    b = np.array([0.5, 0.1, 0.7])
    a = b + np.array([1.0, 2.0, 3.0])
    t, p = stats.paired_t_test(a, b)
    assert t == pytest.approx(2.0 * math.sqrt(3.0), rel=1e-12)
    assert p == pytest.approx(_t_two_sided_p_df2(2.0 * math.sqrt(3.0)), rel=1e-9)
    assert p == pytest.approx(0.0741799, abs=1e-6)


def test_t_test_sign_follows_difference():
    b = np.array([0.5, 0.1, 0.7])
    t_up, p_up = stats.paired_t_test(b + [1.0, 2.0, 3.0], b)
    t_down, p_down = stats.paired_t_test(b - [1.0, 2.0, 3.0], b)
    assert t_up == pytest.approx(-t_down)
    assert p_up == pytest.approx(p_down)


def _exact_wilcoxon_p(diff: np.ndarray) -> float:
    """Exact two-sided signed-rank p by enumerating every sign of the ranks (no ties, zeros dropped)."""
    diff = diff[diff != 0]
    ranks = np.argsort(np.argsort(np.abs(diff))) + 1
    observed = min(ranks[diff > 0].sum(), ranks[diff < 0].sum())
    count = 0
    for signs in itertools.product((0, 1), repeat=diff.size):
        positive = int(np.dot(signs, ranks))
        if positive <= observed:
            count += 1
    return min(1.0, 2.0 * count / 2**diff.size)


def test_wilcoxon_matches_exact_enumeration():
    diff = np.array([0.5, -1.5, 2.5, 3.5, 4.5, 5.5, -6.5, 7.5])
    expected = _exact_wilcoxon_p(diff)
    # W- = 2 + 7 = 9; 32 of the 256 rank subsets sum to 9 or less.
    assert expected == pytest.approx(0.25)
    assert stats.wilcoxon_test(diff, np.zeros(8)) == pytest.approx(expected, abs=1e-12)


def test_wilcoxon_drops_zero_differences():
    diff = np.array([0.5, -1.5, 2.5, 3.5, 4.5, 5.5, -6.5, 7.5, 0.0, 0.0])
    assert stats.wilcoxon_test(diff, np.zeros(diff.size)) == pytest.approx(0.25, abs=1e-12)


def _exhaustive_sign_flip_p(diff: np.ndarray) -> float:
    observed = abs(diff.mean())
    hits = 0
    for signs in itertools.product((1.0, -1.0), repeat=diff.size):
        if abs(np.dot(signs, diff) / diff.size) >= observed - 1e-12:
            hits += 1
    return hits / 2**diff.size


def test_randomization_exact_for_eight_pairs():
    rng = np.random.default_rng(7)
    a = rng.normal(0.3, 0.1, 8)
    b = a - rng.normal(0.05, 0.08, 8)
    expected = _exhaustive_sign_flip_p(a - b)
    p, used = stats.randomization_test(a, b, rng=np.random.default_rng(0), n_permutations=1000)
    assert used == 256
    assert p == pytest.approx(expected, abs=1e-15)


def test_randomization_sampled_close_to_exhaustive():
    # 255 draws < 2**8 forces the sampled path; its p must lie within
    # four binomial standard errors of the exact value.
    rng = np.random.default_rng(11)
    diff = rng.normal(0.04, 0.1, 8)
    expected = _exhaustive_sign_flip_p(diff)
    p, used = stats.randomization_test(
        diff, np.zeros(8), rng=np.random.default_rng(3), n_permutations=255
    )
    assert used == 255
    error = math.sqrt(expected * (1 - expected) / 255)
    assert abs(p - expected) < 4 * error + 1 / 256


def test_randomization_sampled_sixteen_pairs():
    rng = np.random.default_rng(5)
    diff = rng.normal(0.03, 0.1, 16)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=16)))
    expected = float(np.mean(np.abs(signs @ diff) / 16 >= abs(diff.mean()) - 1e-12))
    p, _ = stats.randomization_test(
        diff, np.zeros(16), rng=np.random.default_rng(1), n_permutations=20_000
    )
    error = math.sqrt(expected * (1 - expected) / 20_000)
    assert abs(p - expected) < 4 * error + 1e-4


def test_randomization_is_seeded():
    rng = np.random.default_rng(2)
    diff = rng.normal(0.01, 0.1, 40)
    first = stats.randomization_test(
        diff, np.zeros(40), rng=np.random.default_rng(9), n_permutations=3000
    )
    second = stats.randomization_test(
        diff, np.zeros(40), rng=np.random.default_rng(9), n_permutations=3000
    )
    assert first == second


def test_randomization_never_zero_when_sampled():
    diff = np.full(40, 1.0) + np.linspace(0, 0.1, 40)
    p, used = stats.randomization_test(
        diff, np.zeros(40), rng=np.random.default_rng(0), n_permutations=999
    )
    assert used == 999
    assert p == pytest.approx(1 / 1000)


def test_holm_textbook_example():
    adjusted = stats.holm(np.array([0.01, 0.04, 0.03, 0.005]))
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], atol=1e-15)


def test_holm_caps_at_one_and_skips_nan():
    adjusted = stats.holm(np.array([0.01, np.nan, 0.04, 0.6]))
    # m = 3 finite values: 0.01*3 = 0.03, 0.04*2 = 0.08, 0.6*1 -> max(0.08, 0.6) = 0.6.
    np.testing.assert_allclose(adjusted[[0, 2, 3]], [0.03, 0.08, 0.6], atol=1e-15)
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(stats.holm(np.array([0.5, 0.6])), [1.0, 1.0])


def test_holm_empty_and_all_nan():
    assert stats.holm(np.array([])).size == 0
    assert np.isnan(stats.holm(np.array([np.nan, np.nan]))).all()


def test_cohens_d_by_hand():
    # Differences 1, 2, 3: mean 2, sd 1.
    assert stats.cohens_d_paired(np.array([1.0, 2.0, 3.0]), np.zeros(3)) == pytest.approx(2.0)
    # Differences 1, -1, 3, 5: mean 2, sd sqrt(((-1)^2 + 3^2 + 1 + 3^2) / 3) = sqrt(20/3).
    d = stats.cohens_d_paired(np.array([2.0, 0.0, 4.0, 6.0]), np.ones(4))
    assert d == pytest.approx(2.0 / math.sqrt(20.0 / 3.0))


def test_mean_difference_ci_by_hand():
    low, high = stats.mean_difference_ci(np.array([1.0, 2.0, 3.0]), np.zeros(3), 0.95)
    half = _t_quantile_df2(0.975) / math.sqrt(3.0)
    assert _t_quantile_df2(0.975) == pytest.approx(4.303, abs=1e-3)
    assert low == pytest.approx(2.0 - half, rel=1e-9)
    assert high == pytest.approx(2.0 + half, rel=1e-9)


def test_all_zero_differences():
    a = np.array([0.2, 0.4, 0.1, 0.0])
    result = stats.compare_paired(a, a.copy(), rng=np.random.default_rng(0))
    assert result.p_t == 1.0
    assert result.p_wilcoxon == 1.0
    assert result.p_randomization == 1.0
    assert result.cohens_d == 0.0
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert result.mean_diff == 0.0


@pytest.mark.parametrize("n", [0, 1], ids=["empty", "one-pair"])
def test_fewer_than_two_pairs(n):
    a = np.full(n, 0.3)
    result = stats.compare_paired(a, a - 0.1, rng=np.random.default_rng(0))
    assert result.n == n
    for value in (
        result.p_t,
        result.p_wilcoxon,
        result.p_randomization,
        result.cohens_d,
        result.ci_low,
    ):
        assert math.isnan(value)


def test_constant_nonzero_differences():
    b = np.array([0.1, 0.2, 0.3, 0.4])
    result = stats.compare_paired(b + 0.1, b, rng=np.random.default_rng(0))
    assert math.isnan(result.p_t)
    assert math.isnan(result.cohens_d)
    # Only the identity and the all-flipped vector reach |mean| = 0.1: 2 / 16.
    assert result.p_randomization == pytest.approx(2 / 16)
    assert result.ci_low == pytest.approx(0.1)
    assert result.ci_high == pytest.approx(0.1)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        stats.paired_t_test(np.zeros(3), np.zeros(4))


def test_compare_paired_fields_agree():
    rng = np.random.default_rng(4)
    b = rng.uniform(0, 1, 30)
    a = b + rng.normal(0.05, 0.1, 30)
    result = stats.compare_paired(a, b, rng=np.random.default_rng(0), n_permutations=2000)
    diff = a - b
    assert result.n == 30
    assert result.mean_diff == pytest.approx(diff.mean())
    assert result.mean_a - result.mean_b == pytest.approx(diff.mean())
    t_by_hand = diff.mean() / (diff.std(ddof=1) / math.sqrt(30))
    assert result.t_statistic == pytest.approx(t_by_hand)
    assert result.cohens_d == pytest.approx(t_by_hand / math.sqrt(30))
    assert result.ci_low < result.mean_diff < result.ci_high
    assert result.permutations == 2000

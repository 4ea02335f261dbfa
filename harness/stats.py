"""Paired significance tests, Holm correction, effect sizes and confidence intervals.

Every function compares two paired samples ``a`` (a method) and ``b`` (the
reference) through their differences ``d = a - b``. Pairs are users (each
user's metric averaged over seeds) or seeds (each seed's mean over users);
the caller aligns the two arrays.

Degenerate inputs never raise:

* fewer than two pairs: every p-value, the effect size and the interval are
  ``nan`` (nothing can be tested);
* all differences zero: every p-value is ``1.0``, Cohen's d is ``0.0`` and
  the interval is ``[0, 0]``;
* differences that are constant but not zero: the t-test and Cohen's d are
  undefined (zero standard deviation), so they are ``nan``. The Wilcoxon
  and randomization tests still return a p-value, and the interval is the
  single point ``[mean, mean]``.

:func:`holm` leaves ``nan`` p-values as ``nan`` and leaves them out of the
number of comparisons.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

DEFAULT_PERMUTATIONS = 10_000

# Sign-flip matrices are built in blocks of at most this many entries, which
# bounds memory at about 32 MB of float64 whatever the number of users.
_BLOCK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class PairedComparison:
    """Result of comparing paired samples ``a`` and ``b`` through ``d = a - b``.

    Attributes:
        n: Number of pairs.
        mean_a: Mean of ``a``.
        mean_b: Mean of ``b``.
        mean_diff: Mean of the differences.
        ci_low: Lower end of the t-based confidence interval of the mean difference.
        ci_high: Upper end of that interval.
        t_statistic: Paired t statistic.
        p_t: Two-sided p-value of the paired t-test.
        p_wilcoxon: Two-sided p-value of the Wilcoxon signed-rank test.
        p_randomization: Two-sided p-value of the sign-flip randomization test.
        cohens_d: Mean difference divided by the standard deviation of the differences.
        permutations: Sign flips the randomization test drew, or ``2**n`` when it
            enumerated all of them.
    """

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    t_statistic: float
    p_t: float
    p_wilcoxon: float
    p_randomization: float
    cohens_d: float
    permutations: int


def _differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {a.shape} and {b.shape}")
    return a - b


def _is_constant(diff: np.ndarray) -> bool:
    """Tell whether all differences are equal, with a tolerance for rounding noise."""
    scale = max(float(np.max(np.abs(diff))), 1e-300)
    return float(np.ptp(diff)) <= 1e-12 * scale


def paired_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Run the two-sided paired t-test of ``a`` against ``b``.

    Args:
        a: ``(n,)`` values of the method.
        b: ``(n,)`` values of the reference, paired with ``a`` by position.

    Returns:
        The t statistic and its two-sided p-value. See the module docstring
        for the values returned on degenerate input.
    """
    diff = _differences(a, b)
    if diff.size < 2:
        return math.nan, math.nan
    if not np.any(diff):
        return 0.0, 1.0
    if _is_constant(diff):
        return math.nan, math.nan
    result = sps.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue)


def wilcoxon_test(a: np.ndarray, b: np.ndarray) -> float:
    """Run the two-sided Wilcoxon signed-rank test of ``a`` against ``b``.

    Zero differences are dropped before ranking (Wilcoxon's original
    treatment, scipy's ``zero_method="wilcox"``). That matters for ranking
    metrics, where many users score zero under both methods. Scipy picks the
    exact null distribution for small samples without ties and the normal
    approximation otherwise.

    Args:
        a: ``(n,)`` values of the method.
        b: ``(n,)`` values of the reference, paired with ``a`` by position.

    Returns:
        The two-sided p-value; ``1.0`` when all differences are zero, ``nan``
        for fewer than two pairs.
    """
    diff = _differences(a, b)
    if diff.size < 2:
        return math.nan
    if not np.any(diff):
        return 1.0
    result = sps.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    return float(result.pvalue)


def _all_signs(n: int) -> np.ndarray:
    """Return every ``(2**n, n)`` vector of +1/-1 signs."""
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)), dtype=np.float64)


def randomization_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    rng: np.random.Generator,
    n_permutations: int = DEFAULT_PERMUTATIONS,
) -> tuple[float, int]:
    """Run the two-sided paired randomization (sign-flip permutation) test.

    Under the null hypothesis each difference is as likely to have either
    sign, so the test compares ``|mean(d)|`` with ``|mean(s * d)|`` over
    random sign vectors ``s``. When ``2**n <= n_permutations`` every sign
    vector is enumerated and the p-value is exact: the share of vectors,
    the identity included, whose ``|mean|`` reaches the observed one.
    Otherwise ``n_permutations`` vectors are drawn from ``rng`` and the
    p-value is ``(1 + hits) / (1 + n_permutations)``, which counts the
    observed labelling once and so is never zero (Phipson and Smyth, 2010).

    Args:
        a: ``(n,)`` values of the method.
        b: ``(n,)`` values of the reference, paired with ``a`` by position.
        rng: Source of the random sign vectors; unused when enumerating.
        n_permutations: Random sign vectors to draw, and the enumeration limit.

    Returns:
        The p-value and the number of sign vectors used. For fewer than two
        pairs the result is ``(nan, 0)``; for all-zero differences ``(1.0, 0)``.
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    diff = _differences(a, b)
    n = diff.size
    if n < 2:
        return math.nan, 0
    if not np.any(diff):
        return 1.0, 0

    observed = abs(float(diff.mean()))
    # Float sums of the same values in another order differ in the last bits.
    # The tolerance makes a sign flip that ties with the observed mean count as a hit.
    threshold = observed - 1e-12 * max(observed, float(np.abs(diff).mean()))

    if n < 63 and 2**n <= n_permutations:
        signs = _all_signs(n)  # (2**n, n)
        hits = int(np.count_nonzero(np.abs(signs @ diff) / n >= threshold))
        return hits / signs.shape[0], signs.shape[0]

    block = max(1, _BLOCK_ENTRIES // n)
    hits = 0
    done = 0
    while done < n_permutations:
        size = min(block, n_permutations - done)
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(size, n), dtype=np.int8)  # (size, n)
        hits += int(np.count_nonzero(np.abs(signs @ diff) / n >= threshold))
        done += size
    return (1 + hits) / (1 + n_permutations), n_permutations


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Adjust p-values for multiple comparisons with Holm's step-down method.

    With the ``m`` finite p-values sorted ascending, the i-th smallest
    (1-based) becomes ``max_{j <= i} min(1, (m - j + 1) * p_(j))``. Rejecting
    where the adjusted value is below alpha controls the family-wise error
    rate at alpha. ``nan`` entries stay ``nan`` and do not count towards ``m``.

    Args:
        pvalues: ``(m,)`` raw p-values in any order.

    Returns:
        ``(m,)`` adjusted p-values in the input order.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def cohens_d_paired(a: np.ndarray, b: np.ndarray) -> float:
    """Return Cohen's d for paired samples: ``mean(d) / sd(d)`` with ``ddof=1``.

    This is the effect size of the paired design (often written d_z), not the
    pooled-variance d of two independent groups.

    Returns:
        The effect size; ``0.0`` for all-zero differences, ``nan`` for fewer
        than two pairs or constant non-zero differences.
    """
    diff = _differences(a, b)
    if diff.size < 2:
        return math.nan
    if not np.any(diff):
        return 0.0
    if _is_constant(diff):
        return math.nan
    return float(diff.mean() / diff.std(ddof=1))


def mean_difference_ci(
    a: np.ndarray, b: np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Return the t-based confidence interval of the mean difference ``mean(a - b)``.

    The interval is ``mean(d) +/- t_{(1+confidence)/2, n-1} * sd(d) / sqrt(n)``.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for fewer than two pairs.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = _differences(a, b)
    n = diff.size
    if n < 2:
        return math.nan, math.nan
    mean = float(diff.mean())
    half = (
        float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1)) * float(diff.std(ddof=1)) / math.sqrt(n)
    )
    return mean - half, mean + half


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Return the t-based confidence interval of ``mean(values)``.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for fewer than two values.
    """
    values = np.asarray(values, dtype=np.float64)
    return mean_difference_ci(values, np.zeros_like(values), confidence)


def compare_paired(
    a: np.ndarray,
    b: np.ndarray,
    *,
    rng: np.random.Generator,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    confidence: float = 0.95,
) -> PairedComparison:
    """Run every paired test and effect measure on one pair of samples.

    Args:
        a: ``(n,)`` values of the method.
        b: ``(n,)`` values of the reference, paired with ``a`` by position.
        rng: Source of the randomization test's sign vectors.
        n_permutations: Sign vectors for the randomization test.
        confidence: Level of the confidence interval of the mean difference.

    Returns:
        The collected statistics; see :class:`PairedComparison`.
    """
    diff = _differences(a, b)
    t_statistic, p_t = paired_t_test(a, b)
    p_randomization, used = randomization_test(a, b, rng=rng, n_permutations=n_permutations)
    ci_low, ci_high = mean_difference_ci(a, b, confidence)
    empty = diff.size == 0
    return PairedComparison(
        n=int(diff.size),
        mean_a=math.nan if empty else float(np.mean(a)),
        mean_b=math.nan if empty else float(np.mean(b)),
        mean_diff=math.nan if empty else float(diff.mean()),
        ci_low=ci_low,
        ci_high=ci_high,
        t_statistic=t_statistic,
        p_t=p_t,
        p_wilcoxon=wilcoxon_test(a, b),
        p_randomization=p_randomization,
        cohens_d=cohens_d_paired(a, b),
        permutations=used,
    )

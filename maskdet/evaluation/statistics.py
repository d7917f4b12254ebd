"""The statistics of maskdet's reports, in one module: intervals, tests, power, corrections and the
bootstrap. Each function says what it computes, at what level, and where it is written by hand (no maintained
library offers it) rather than taken from scipy or statsmodels. Their coverage and error rates are checked by
simulations with known answers (tests/test_statistics.py, tests/test_compare_statistics.py).

Used by the bias audit (``bias.py``), the comparison of configurations (``compare.py``), the subset and
leakage studies, calibration, abstention, robustness and the scene scores.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq
from scipy.stats import binomtest, norm

from maskdet.errors import ConfigError
from maskdet.evaluation.options import BIAS, CORRECTIONS

POWER = 0.8  # the power at which a minimum detectable gap is stated

# ----------------------------------------------------------------------------- proportions
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Two-sided pooled z-test of p1 == p2; returns (z, p-value)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / se
    return z, float(2 * norm.sf(abs(z)))


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of p1 - p2 from the two Wilson intervals (Newcombe's hybrid score method)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def one_sided_two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """p-value of the pooled two-proportion z-test of p1 > p2."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 1.0 if se == 0 else float(norm.sf((k1 / n1 - k2 / n2) / se))


# ----------------------------------------------------------------------------- power
def two_proportion_power(p1: float, p2: float, n1: int, n2: int, alpha: float = BIAS.alpha) -> float:
    """Power of ``two_proportion_test`` (two-sided, level ``alpha``) when the true proportions are p1 and p2:
    the normal approximation with the pooled standard error under the null and the unpooled one under the
    alternative (Fleiss; statsmodels' ``power_proportions_2indep``)."""
    pooled = (n1 * p1 + n2 * p2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    se1 = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    crit, d = norm.isf(alpha / 2) * se0, abs(p1 - p2)
    if se1 == 0:
        return float(d > crit)
    return float(norm.cdf((d - crit) / se1) + norm.cdf((-d - crit) / se1))


def min_detectable_gap(baseline: float, n1: int, n2: int, alpha: float = BIAS.alpha, power: float = POWER) -> float:
    """The smallest drop d (group 2 at ``baseline`` - d, group 1 at ``baseline``) that ``two_proportion_test``
    detects with ``power`` at level ``alpha``; NaN when not even d = ``baseline`` (group 2 at 0) reaches it."""
    if not (n1 > 0 and n2 > 0 and 0 < baseline <= 1):
        return math.nan
    shortfall = lambda d: two_proportion_power(baseline, baseline - d, n1, n2, alpha) - power  # noqa: E731
    if shortfall(baseline) < 0:
        return math.nan
    return float(brentq(shortfall, 1e-9, baseline, xtol=1e-7))


# ----------------------------------------------------------------------------- calibration
def calibration_gap(confidence, correct, confidence_level: float = 0.95) -> tuple[float, float, float]:
    """Mean confidence minus accuracy (calibration-in-the-large; > 0 overconfident) and its interval: the
    mean confidence minus the Wilson interval of the accuracy. Given the confidences, the number correct is
    a sum of independent Bernoulli draws whose variance is at most the binomial one, so the interval is
    slightly conservative (covering 95-97 % in simulation at n >= 30, tests/test_statistics.py)."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    if len(confidence) == 0:
        return math.nan, math.nan, math.nan
    low, high = wilson_interval(int(correct.sum()), len(correct), confidence_level)
    mean = float(confidence.mean())
    return mean - float(correct.mean()), mean - high, mean - low


def spiegelhalter_test(confidence, correct) -> tuple[float, float]:
    """Spiegelhalter's (1986) z-test of calibration, H0: each prediction is correct with probability its
    confidence; z = sum((y - p)(1 - 2p)) / sqrt(sum((1 - 2p)^2 p (1 - p))), two-sided p-value from N(0, 1).
    NaN when the statistic has no variance (every confidence 0.5 or 0 or 1)."""
    p, y = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    variance = float(np.sum((1 - 2 * p) ** 2 * p * (1 - p)))
    if variance <= 0:
        return math.nan, math.nan
    z = float(np.sum((y - p) * (1 - 2 * p)) / math.sqrt(variance))
    return z, float(2 * norm.sf(abs(z)))


# ----------------------------------------------------------------------------- families of tests
def adjust_p_values(p_values, method: str = "holm") -> np.ndarray:
    """``p_values`` corrected together as one family: Holm's step-down (family-wise error) or
    Benjamini-Hochberg's step-up (false discovery rate); the values of statsmodels' ``multipletests``."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "fdr_bh":
        adjusted = np.minimum.accumulate((m / np.arange(m, 0, -1)) * ranked[::-1])[::-1]
    else:
        raise ConfigError(f"correction={method!r}: use one of {', '.join(CORRECTIONS)}.")
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values over the finite ones (nan stays nan)."""
    return correct_family(p_values, "holm")


def correct_family(p_values, method: str = "holm") -> np.ndarray:
    """The finite ``p_values`` corrected together as one family (``adjust_p_values``: Holm or
    Benjamini-Hochberg, statsmodels' values); nan stays nan and does not count."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), math.nan)
    valid = np.isfinite(p)
    adjusted[valid] = adjust_p_values(p[valid], method)
    return adjusted


# ----------------------------------------------------------------------------- over folds and resamples
def two_level_bootstrap(resampled, rng: np.random.Generator, observed=None) -> np.ndarray:
    """Draws of a mean over k folds with both sources of variance. ``resampled`` is k x B: each fold's
    figure (or paired difference) on B resamples of the test images (the same resamples for every fold and
    configuration); ``observed``: each fold's figure on the test split itself (default: the mean of its row).

    Test-set sampling: the resamples' mean over folds, its deviations shrunk to the covariance *between*
    folds (the mean off-diagonal covariance of the k rows over resamples). Resampling images alone would also
    count each run's own image-by-image noise, which the fold level already holds; counted twice, the test
    is conservative (as resampling both factors of a crossed design is: Owen 2007). Training variability:
    per resample, the sample std over folds / sqrt(k) times a draw of Student's t with k - 1 degrees of
    freedom, the std of the folds' *observed* figures (on resampled images it would hold the image noise
    again). Resampling only k <= 10 folds would shrink their variance by (k - 1)/k, with normal tails.
    One fold: no fold level, the image bootstrap alone (conditional on that training run)."""
    resampled = np.atleast_2d(np.asarray(resampled, dtype=float))
    k, n_boot = resampled.shape
    mean = resampled.mean(0)
    if k < 2:
        return mean
    centre = mean.mean()
    covariance = np.cov(resampled)
    between = (covariance.sum() - np.trace(covariance)) / (k * (k - 1))
    spread = mean.var(ddof=1)
    shrink = math.sqrt(min(1.0, max(0.0, between) / spread)) if spread > 0 else 0.0
    observed = resampled.mean(1) if observed is None else np.asarray(observed, dtype=float)
    return centre + shrink * (mean - centre) + observed.std(ddof=1) / math.sqrt(k) * rng.standard_t(k - 1, size=n_boot)


def bootstrap_p_value(draws) -> float:
    """Two-sided p-value matching the percentile interval: 2 min(P*(d <= 0), P*(d >= 0)), each count + 1
    over resamples + 1 (never 0; 1 when every draw is 0)."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return math.nan
    low, high = int((draws <= 0).sum()), int((draws >= 0).sum())
    return float(min(1.0, 2 * (min(low, high) + 1) / (len(draws) + 1)))


def percentile_interval(draws, level: float) -> tuple[float, float]:
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return math.nan, math.nan
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval over folds (nan where fewer than two values)."""
    values = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def corrected_t_test(differences, n_train: float, n_test: float, confidence: float = 0.95) -> dict:
    """Nadeau & Bengio (2003) corrected resampled t-test of the mean of per-fold differences (for folds
    tested on different images).

    Written here because no maintained library offers it (scipy's paired t-test is the uncorrected one);
    the variance of the mean is ``(1/k + n_test/n_train) s^2`` instead of ``s^2 / k``."""
    d = np.asarray(differences, dtype=float)
    k, mean = len(d), float(d.mean())
    scale = math.sqrt((1 / k + n_test / n_train) * d.var(ddof=1))
    if scale <= 1e-12:  # every fold gave the same difference (up to rounding): no spread to test against
        p_value = 1.0 if abs(mean) <= 1e-12 else math.nan
        return {"difference": mean, "ci_low": mean, "ci_high": mean, "p_value": p_value}
    t = mean / scale
    half = stats.t.ppf(0.5 + confidence / 2, k - 1) * scale
    return {"difference": mean, "ci_low": mean - half, "ci_high": mean + half,
            "p_value": float(2 * stats.t.sf(abs(t), k - 1))}


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray, confidence: float = 0.95) -> dict:
    """McNemar's exact test on paired predictions: a binomial test of the discordant pairs (scipy), with
    Newcombe's (1998, method 10) score interval of the paired accuracy difference at ``confidence``.

    The interval is written here (no scipy/scikit-learn function) from each accuracy's Wilson interval and
    the correlation of the two models' hits, as the unpaired Newcombe interval of the bias audit is; unlike
    an interval given the discordant pairs, it does not stop at the observed difference when one model wins
    every discordant pair."""
    a_only = int((correct_a & ~correct_b).sum())
    b_only = int((~correct_a & correct_b).sum())
    both = int((correct_a & correct_b).sum())
    n = len(correct_a)
    neither = n - both - a_only - b_only
    p_a, p_b = (both + a_only) / n, (both + b_only) / n
    (low_a, high_a), (low_b, high_b) = wilson_interval(both + a_only, n, confidence), \
        wilson_interval(both + b_only, n, confidence)
    # the hits' correlation, with Newcombe's continuity correction: 0 for a small positive association
    association = both * neither - a_only * b_only
    association = association - n / 2 if association > n / 2 else min(association, 0)
    denominator = math.sqrt((both + a_only) * (neither + b_only) * (both + b_only) * (neither + a_only))
    phi = association / denominator if denominator else 0.0
    d = p_a - p_b
    low = d - math.sqrt((p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2)
    high = d + math.sqrt((high_a - p_a) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b) + (p_b - low_b) ** 2)
    p_value = float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return {"difference": d, "ci_low": max(-1.0, low), "ci_high": min(1.0, high), "p_value": p_value,
            "n": n, "a_only_correct": a_only, "b_only_correct": b_only}

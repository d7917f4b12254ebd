"""The bias audit's statistics against simulations with a known answer and against statsmodels: the
calibration gap's interval coverage at group sizes, Spiegelhalter's test's size, the minimum detectable gap
(statsmodels' power and an observed detection rate), and the one family of gap tests (statsmodels'
multipletests).

``python -m tests.test_statistics`` prints the tables quoted in the README (more repetitions, and the old
binned ECE's bootstrap coverage beside the calibration gap's)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from maskdet.evaluation.bias import audit
from maskdet.evaluation.statistics import (
    adjust_p_values,
    calibration_gap,
    min_detectable_gap,
    spiegelhalter_test,
    two_proportion_power,
    two_proportion_test,
    wilson_interval,
)

Z = norm.ppf(0.975)

# Confidences of a 4-class model and the true P(correct | confidence), with the true calibration gap
# E[confidence] - P(correct) known analytically: (draw, accuracy given confidence, true gap).
BETA_MEAN = 4 / 5.2  # mean of Beta(4, 1.2)
SCENARIOS = {
    # overconfident by 0.05 everywhere: the true gap and the true ECE are both 0.05 (the case)
    "overconfident by 0.05": (lambda rng, size: 0.25 + 0.75 * rng.beta(4, 1.2, size), lambda c: c - 0.05, 0.05),
    "overconfident in proportion": (lambda rng, size: 0.25 + 0.75 * rng.beta(4, 1.2, size),
                                    lambda c: c - 0.15 * (c - 0.25), 0.15 * 0.75 * BETA_MEAN),
    "calibrated": (lambda rng, size: 0.25 + 0.75 * rng.beta(4, 1.2, size), lambda c: c, 0.0),
    "accurate (0.92), overconfident by 0.03": (lambda rng, size: 0.5 + 0.5 * rng.beta(8, 1, size),
                                               lambda c: c - 0.03, 0.03),
    "underconfident": (lambda rng, size: 0.25 + 0.75 * rng.beta(2, 2, size), lambda c: c + 0.08 * (1 - c),
                       -0.08 * (1 - 0.625)),
}
SIZES = (30, 90, 180)


def _wilson(k, n):
    """Wilson 95 % interval, vectorised (the closed form of ``wilson_interval``)."""
    p = k / n
    centre, half = (p + Z**2 / (2 * n)) / (1 + Z**2 / n), Z * np.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return centre - half, centre + half


def _draw(name, n, reps, rng):
    draw, accuracy, truth = SCENARIOS[name]
    confidence = draw(rng, (reps, n))
    return confidence, rng.random((reps, n)) < accuracy(confidence), truth


def gap_coverage(name, n, reps, rng) -> float:
    """How often the calibration gap's interval (``calibration_gap``, vectorised) covers the true gap."""
    confidence, correct, truth = _draw(name, n, reps, rng)
    low, high = _wilson(correct.sum(1), n)
    mean = confidence.mean(1)
    return float(np.mean((mean - high <= truth) & (truth <= mean - low)))


def test_the_vectorised_intervals_are_the_audit_s_own():
    from statsmodels.stats.proportion import proportion_confint

    rng = np.random.default_rng(1)
    for name in SCENARIOS:
        confidence, correct, _ = _draw(name, 30, 5, rng)
        for c, y in zip(confidence, correct):
            low, high = _wilson(y.sum(), len(y))
            assert wilson_interval(int(y.sum()), len(y)) == pytest.approx((low, high), abs=1e-12)
            assert proportion_confint(int(y.sum()), len(y), method="wilson") == pytest.approx((low, high), abs=1e-12)
            assert calibration_gap(c, y) == pytest.approx((c.mean() - y.mean(), c.mean() - high, c.mean() - low))


def test_the_calibration_gap_interval_covers_the_true_gap_at_group_sizes():
    """Nominal 95 %: at least 93 % achieved (4,000 simulated groups per cell, Monte Carlo se 0.4 %) at
    n = 30, 90, 180, for over-, under- and well-calibrated models with the truth known analytically."""
    rng = np.random.default_rng(0)
    for name, (draw, accuracy, truth) in SCENARIOS.items():
        big = draw(rng, 2_000_000)  # the analytic truth, checked by a large sample
        assert np.mean(big - accuracy(big)) == pytest.approx(truth, abs=1e-3)
        for n in SIZES:
            coverage = gap_coverage(name, n, 4000, rng)
            assert 0.93 <= coverage <= 0.99, (name, n, coverage)


def test_spiegelhalter_s_test_holds_its_size_and_sees_errors_that_cancel_in_the_mean():
    rng = np.random.default_rng(2)
    reps = 4000
    for n in SIZES:
        confidence = rng.uniform(0.4, 1.0, (reps, n))
        weight = 1 - 2 * confidence
        variance = (weight**2 * confidence * (1 - confidence)).sum(1)
        # calibrated: rejected about 5 % of the time
        correct = rng.random((reps, n)) < confidence
        p = 2 * norm.sf(np.abs(((correct - confidence) * weight).sum(1) / np.sqrt(variance)))
        assert 0.03 <= np.mean(p < 0.05) <= 0.07, n
        for i in range(3):  # the vectorised statistic is the audit's
            assert spiegelhalter_test(confidence[i], correct[i])[1] == pytest.approx(p[i], rel=1e-9)
        # overconfident when sure, underconfident when unsure, and calibrated on average (true gap 0)
        correct = rng.random((reps, n)) < 0.7 + 0.5 * (confidence - 0.7)
        p = 2 * norm.sf(np.abs(((correct - confidence) * weight).sum(1) / np.sqrt(variance)))
        assert np.mean(p < 0.05) > {30: 0.15, 90: 0.35, 180: 0.55}[n]
    assert math.isnan(spiegelhalter_test(np.full(5, 0.5), np.ones(5))[0])  # no variance: no test


def test_power_is_statsmodels_and_the_minimum_detectable_gap_is_detected_80_percent_of_the_time():
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import power_proportions_2indep, proportion_effectsize

    rng = np.random.default_rng(3)
    # the sizes (77 white, 37 black test images), one test and a family of six
    for baseline, n1, n2, alpha in ((0.8, 77, 37, 0.05), (0.8, 77, 37, 0.05 / 6), (0.9, 400, 30, 0.05 / 20),
                                    (0.6, 120, 120, 0.01)):
        d = min_detectable_gap(baseline, n1, n2, alpha)
        assert two_proportion_power(baseline, baseline - d, n1, n2, alpha) == pytest.approx(0.8, abs=1e-6)
        # statsmodels: group 1 (n1) at prop2 + diff, group 2 (n1 * ratio) at prop2
        reference = power_proportions_2indep(d, baseline - d, n1, n2 / n1, alpha=alpha).power
        assert reference == pytest.approx(0.8, abs=1e-6)
        # the arcsine approximation (Cohen's h) lands near the same gap away from 0 and 1 (near 1 it differs:
        # 0.30 against 0.26 at 0.9 and n = 400 / 30, where the simulation below sides with the gap found here)
        h = NormalIndPower().solve_power(effect_size=None, nobs1=n1, alpha=alpha, power=0.8, ratio=n2 / n1)
        if baseline <= 0.8:
            assert baseline - np.sin(np.arcsin(np.sqrt(baseline)) - h / 2) ** 2 == pytest.approx(d, abs=0.02)
            assert proportion_effectsize(baseline, baseline - d) == pytest.approx(h, rel=0.1)
        # observed: the audit's own test, on 4,000 simulated audits with the gap planted at d
        k1, k2 = rng.binomial(n1, baseline, 4000), rng.binomial(n2, baseline - d, 4000)
        detected = np.mean([two_proportion_test(a, n1, b, n2)[1] < alpha for a, b in zip(k1, k2)])
        assert detected == pytest.approx(0.8, abs=0.035), (baseline, n1, n2, alpha, detected)
    assert math.isnan(min_detectable_gap(0.8, 5, 5, 0.001))  # no gap reaches 80 % power


def test_holm_and_benjamini_hochberg_are_statsmodels_multipletests():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(4)
    for trial in range(20):  # few: statsmodels' Holm runs gc.collect() on every call
        m = int(rng.integers(1, 25))
        p = rng.uniform(0, 0.2, m) ** rng.uniform(0.5, 3)
        if trial % 3 == 0:
            p[: m // 2] = p[0]  # ties
        for method in ("holm", "fdr_bh"):
            np.testing.assert_allclose(adjust_p_values(p, method), multipletests(p, method=method)[1], atol=1e-12)


def _groups(sizes: dict, accuracy: dict, rng) -> pd.DataFrame:
    rows = []
    for (gender, race), n in sizes.items():
        right = rng.random(n) < accuracy[(gender, race)]
        rows += [{"label": "a", "prediction": "a" if r else "b", "confidence": 0.8, "gender": gender, "race": race,
                  "age_group": "20-39"} for r in right]
    return pd.DataFrame(rows)


def test_every_gap_test_of_a_report_is_one_family_with_simultaneous_intervals_and_stated_power():
    rng = np.random.default_rng(5)
    sizes = {("male", "white"): 200, ("female", "white"): 150, ("male", "black"): 60, ("female", "black"): 40}
    accuracy = {("male", "white"): 0.9, ("female", "white"): 0.8, ("male", "black"): 0.85, ("female", "black"): 0.7}
    predictions = _groups(sizes, accuracy, rng)
    for method in ("holm", "fdr_bh"):
        report = audit(predictions, ["a", "b"], n_bootstrap=10, correction=method)
        tests = report["family"]["tests"]
        # gender 1 pair, race 1, age group none (one group), gender x race 4 groups -> 6 pairs
        assert len(tests) == report["family"]["size"] == 8
        raw = [two_proportion_test(t["k_a"], t["n_a"], t["k_b"], t["n_b"])[1] for t in tests]
        from statsmodels.stats.multitest import multipletests

        np.testing.assert_allclose([t["p_value"] for t in tests], multipletests(raw, method=method)[1])
        assert all(t["significant"] == (t["p_value"] < 0.05) for t in tests)
        assert report["family"]["interval_level"] == pytest.approx(1 - 0.05 / 8)
        for gap in report["gaps"]:
            if "gap" not in gap:
                continue
            assert gap["family_size"] == 8 and gap["power_alpha"] == pytest.approx(0.05 / 8)
            assert gap["min_detectable_gap"] == pytest.approx(
                min_detectable_gap(gap["baseline"], gap["best_n"], gap["worst_n"], 0.05 / 8))
            (test,) = [t for t in tests if (t["attribute"], t["group_a"], t["group_b"])
                       == (gap["attribute"], gap["best_group"], gap["worst_group"])]
            assert gap["p_value"] == test["p_value"] and gap["p_value_raw"] == pytest.approx(test["p_value_raw"])
    # the groups of 40 and 60 could only show gaps above 0.26 and 0.22 against 200 at alpha 0.05/8: warned
    baseline = report["gaps"][-1]["baseline"]
    for warning, (group, n) in zip(report["warnings"], [("female/black", 40), ("male/black", 60)], strict=True):
        detectable = min_detectable_gap(baseline, 200, n, 0.05 / 8)
        assert 0.2 < detectable < 0.3 and warning.startswith(f"gender_x_race: {group} (n = {n}) is too small")
        assert f"against male/white (n = 200) the audit could detect only a gap above {detectable:.2f}" in warning


def test_a_non_significant_gap_says_what_the_audit_could_have_seen(tmp_path):
    from maskdet.evaluation.bias import write_bias_report

    rng = np.random.default_rng(6)
    predictions = _groups({("male", "white"): 77, ("male", "black"): 37}, {("male", "white"): 0.8,
                                                                           ("male", "black"): 0.75}, rng)
    report = write_bias_report(predictions, ["a", "b"], tmp_path, n_bootstrap=10, attributes=["race"])
    (gap,) = report["gaps"]
    assert not gap["significant"] and report["family"]["size"] == 1
    text = (tmp_path / "bias_report.md").read_text()
    assert f"not significant; this audit could only detect gaps above {gap['min_detectable_gap']:.2f}" in text
    assert 0.2 < gap["min_detectable_gap"] < 0.35


def test_recall_of_one_class_as_the_primary_metric():
    rng = np.random.default_rng(7)
    predictions = _groups({("male", "white"): 100, ("female", "white"): 100},
                          {("male", "white"): 0.95, ("female", "white"): 0.6}, rng)
    report = audit(predictions, ["a", "b"], n_bootstrap=10, primary_metric="recall_a", attributes=["gender"])
    (gap,) = report["gaps"]
    assert gap["metric"] == "recall_a" and gap["significant"]
    from maskdet.errors import ConfigError

    with pytest.raises(ConfigError, match="primary_metric='macro_f1'.*accuracy, recall_a, recall_b"):
        audit(predictions, ["a", "b"], primary_metric="macro_f1")


def main() -> None:
    """The README's tables: coverage of the calibration gap and of the old binned-ECE bootstrap interval,
    and the detection rate at the stated minimum detectable gap."""
    from maskdet.evaluation.metrics import expected_calibration_error

    rng = np.random.default_rng(0)
    print("| scenario | true gap | n = 30 | n = 90 | n = 180 | binned ECE bootstrap, n = 30 / 90 / 180 |")
    print("|---|---|---|---|---|---|")
    for name, (_, _, truth) in SCENARIOS.items():
        cells = [f"{gap_coverage(name, n, 20000, rng):.1%}" for n in SIZES]
        ece = []
        for n in SIZES:  # the old figure: 15-bin ECE, percentile bootstrap (1000 resamples), 200 groups
            confidence, correct, _ = _draw(name, n, 200, rng)
            covered = 0
            for c, y in zip(confidence, correct):
                idx = rng.integers(0, n, (1000, n))
                low, high = np.percentile(expected_calibration_error(c[idx], y[idx]), [2.5, 97.5])
                covered += low <= abs(truth) <= high  # the miscalibration has one sign: true ECE = |gap|
            ece.append(f"{covered / 200:.0%}")
        print(f"| {name} | {truth:+.4f} | {' | '.join(cells)} | {' / '.join(ece)} |")
    print()
    print("| Spiegelhalter's test at 5 % | n = 30 | n = 90 | n = 180 |")
    print("|---|---|---|---|")
    rates = {"calibrated (size)": [], "errors that cancel in the mean (power)": []}
    for n in SIZES:
        confidence = rng.uniform(0.4, 1.0, (20000, n))
        weight = 1 - 2 * confidence
        scale = np.sqrt((weight**2 * confidence * (1 - confidence)).sum(1))
        for key, accuracy in zip(rates, (confidence, 0.7 + 0.5 * (confidence - 0.7))):
            correct = rng.random((20000, n)) < accuracy
            rates[key].append(np.mean(2 * norm.sf(np.abs(((correct - confidence) * weight).sum(1) / scale)) < 0.05))
    for key, values in rates.items():
        print(f"| {key} | {' | '.join(f'{v:.1%}' for v in values)} |")
    print()
    print("| accuracy | n1 | n2 | alpha | minimum detectable gap | detection rate (20,000 simulated audits) |")
    print("|---|---|---|---|---|---|")
    for baseline, n1, n2, alpha in ((0.8, 77, 37, 0.05), (0.8, 77, 37, 0.05 / 6), (0.9, 400, 30, 0.05 / 20)):
        d = min_detectable_gap(baseline, n1, n2, alpha)
        k1, k2 = rng.binomial(n1, baseline, 20000), rng.binomial(n2, baseline - d, 20000)
        rate = np.mean([two_proportion_test(a, n1, b, n2)[1] < alpha for a, b in zip(k1, k2)])
        print(f"| {baseline} | {n1} | {n2} | {alpha:.3g} | {d:.3f} | {rate:.1%} |")


if __name__ == "__main__":
    main()

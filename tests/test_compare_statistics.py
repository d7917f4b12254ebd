"""maskdet.compare's statistics against independent computations and simulations with a known answer.

- the resampled figures equal maskdet.evaluation.metrics' functions on the resampled rows, and the family's
  correction equals statsmodels' ``multipletests``;
- family-wise error rate: sweeps of identical configurations (k folds x 3 configurations, every run with the
  same true accuracy) are compared end to end by ``compare_pairs``: the rate of any significant verdict in
  the report's one family must stay at or under alpha (within simulation error);
- coverage: the shared-holdout two-level bootstrap interval of a difference in accuracy covers the known
  true difference between two configurations (test-set sampling and training variability both present).

``python tests/test_compare_statistics.py`` runs the larger simulations quoted in the README.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats
from statsmodels.stats.multitest import multipletests

from maskdet.evaluation.compare import (
    compare_pairs,
    resample_runs,
    resample_weights,
    resampled_metrics,
    write_comparison,
)
from maskdet.evaluation.cv import write_summary
from maskdet.evaluation.metrics import expected_calibration_error, macro_f1
from maskdet.evaluation.statistics import correct_family, percentile_interval, two_level_bootstrap

CLASSES = np.array(["without_mask", "with_surgical_mask", "with_cloth_mask", "with_ffp2_mask"])


def _frame(rng, difficulty, shift=0.0, confidence_noise=0.5):
    """One run's predictions on images of latent ``difficulty`` (logit of P(correct)) moved by ``shift``."""
    n = len(difficulty)
    label = CLASSES[np.arange(n) % 4]
    correct = rng.random(n) < special.expit(difficulty + shift)
    wrong = CLASSES[(np.arange(n) % 4 + rng.integers(1, 4, n)) % 4]
    frame = pd.DataFrame({"path": [f"/d/{i}.jpg" for i in range(n)], "label": label,
                          "prediction": np.where(correct, label, wrong),
                          "confidence": special.expit(difficulty + shift + rng.normal(0, confidence_noise, n)),
                          "gender": np.where(np.arange(n) % 2, "male", "female"), "correct": correct})
    frame.index = frame["path"] + "\t" + frame["label"]
    return frame


def _runs(frames: dict, n_train=300):
    """The runs table load_runs would build for in-memory runs {(config, fold): frame}."""
    rows = []
    for (config, fold), f in frames.items():
        by_group = f.groupby("gender")["correct"].mean()
        rows.append({"config": config, "fold": fold, "run_dir": f"{config}/{fold}", "accuracy": f["correct"].mean(),
                     "macro_f1": macro_f1(f["label"].to_numpy(), f["prediction"].to_numpy())[0],
                     "ece": expected_calibration_error(f["confidence"].to_numpy(), f["correct"].to_numpy())[0],
                     "gap": by_group.max() - by_group.min(), "gap_metric": "accuracy", "min_group_size": 30,
                     "n_train": n_train, "n_test": len(f), "status": "ok", "test_data": "t"})
    runs = pd.DataFrame(rows)
    runs.attrs.update(design="shared", gap_attribute="gender")
    return runs, {f"{c}/{k}": f for (c, k), f in frames.items()}


def identical_sweep_errors(reps: int, configs: int = 3, folds: int = 5, n: int = 150, tau: float = 0.0,
                           n_boot: int = 4000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Sweeps of identical configurations compared end to end: how often the family says anything."""
    rng = np.random.default_rng(seed)
    any_verdict, any_over_folds, raw_bootstrap, m = 0, 0, [], 0
    for rep in range(reps):
        difficulty = rng.normal(1.1, 1.2, n)  # one test split per sweep
        frames = {(f"c{c}", k): _frame(rng, difficulty, rng.normal(0, tau) if tau else 0.0)
                  for c in range(configs) for k in range(folds)}
        runs, data = _runs(frames)
        resampled, keys = resample_runs(runs, data, n_boot, seed=rep)
        pairs, family = compare_pairs(runs, data, [f"c{c}" for c in range(configs)], [], alpha=alpha,
                                      resampled=resampled, keys=keys, seed=rep)
        m = family["size"]
        any_verdict += any(p["significant"] for p in pairs if p["family"] == "configurations")  # claims about configurations
        any_over_folds += any(p["significant"] for p in pairs if p["test"] == "bootstrap")
        raw_bootstrap += [p["p_value"] < alpha for p in pairs if p["test"] == "bootstrap"]
    return {"reps": reps, "family_size": m, "fwer": any_verdict / reps, "fwer_over_folds": any_over_folds / reps,
            "size_of_one_bootstrap_test": float(np.mean(raw_bootstrap))}


def true_accuracy(shift: float, tau: float) -> float:
    """E[expit(a + shift + u)], a ~ N(1.1, 1.2), u ~ N(0, tau): a configuration's true accuracy over test
    images and training runs (Gauss-Hermite quadrature)."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    return float((w * special.expit(1.1 + shift + math.hypot(1.2, tau) * x)).sum() / w.sum())


def shared_holdout_coverage(reps: int, folds: int = 5, n: int = 200, tau: float = 0.3, shift: float = 0.3,
                            n_boot: int = 1000, seed: int = 1, level: float = 0.95) -> dict:
    """How often the two-level bootstrap interval of accuracy(A) - accuracy(B) covers the true difference."""
    rng = np.random.default_rng(seed)
    truth = true_accuracy(shift, tau) - true_accuracy(0.0, tau)
    covered, widths = 0, []
    for _ in range(reps):
        difficulty = rng.normal(1.1, 1.2, n)
        hits = [np.array([rng.random(n) < special.expit(difficulty + s + rng.normal(0, tau)) for _ in range(folds)],
                         float) for s in (shift, 0.0)]
        weights = resample_weights(n, n_boot, rng)
        diffs = (hits[0] - hits[1]) @ weights.T / n  # folds x resamples, the same images for A and B
        low, high = percentile_interval(two_level_bootstrap(diffs, rng, (hits[0] - hits[1]).mean(1)), level)
        covered += low <= truth <= high
        widths.append(high - low)
    return {"reps": reps, "folds": folds, "n": n, "tau": tau, "truth": truth, "coverage": covered / reps,
            "mean_width": float(np.mean(widths))}


# ------------------------------------------------------------------ independent computations
def test_resampled_metrics_equal_the_metric_functions_on_resampled_rows():
    rng = np.random.default_rng(3)
    frame = _frame(rng, rng.normal(1, 1, 120))
    idx = rng.integers(0, 120, size=(50, 120))
    weights = np.stack([np.bincount(row, minlength=120) for row in idx]).astype(float)
    groups = frame["gender"].to_numpy()
    counts = (np.column_stack([(groups == g) & frame["correct"] for g in ("female", "male")]).astype(float),
              np.column_stack([groups == g for g in ("female", "male")]).astype(float))
    out = resampled_metrics(frame, weights, counts)
    label, pred = frame["label"].to_numpy()[idx], frame["prediction"].to_numpy()[idx]
    correct, confidence = frame["correct"].to_numpy()[idx], frame["confidence"].to_numpy()[idx]
    assert out["accuracy"] == pytest.approx(correct.mean(1))
    assert out["macro_f1"] == pytest.approx(macro_f1(label, pred))
    assert out["ece"] == pytest.approx(expected_calibration_error(confidence, correct))
    by_group = [np.array([c[g == k].mean() for c, g in zip(correct, groups[idx])]) for k in ("female", "male")]
    assert out["gap"] == pytest.approx(np.abs(by_group[0] - by_group[1]))


def test_the_family_correction_is_statsmodels_multipletests():
    p = np.random.default_rng(0).uniform(0, 0.2, 23) ** 2
    for method in ("holm", "fdr_bh"):
        assert correct_family(p, method) == pytest.approx(multipletests(p, method=method)[1])
    with_nan = correct_family([0.01, math.nan, 0.04], "holm")
    assert math.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx(multipletests([0.01, 0.04], method="holm")[1])


def test_one_fold_bootstrap_is_the_image_bootstrap_and_t_level_matches_students_t():
    rng = np.random.default_rng(0)
    resampled = rng.normal(0, 1, (1, 500))
    assert two_level_bootstrap(resampled, rng) == pytest.approx(resampled[0])
    # no image variability: the fold level alone is the t interval over folds
    folds = np.array([0.70, 0.74, 0.69, 0.75, 0.72])
    draws = two_level_bootstrap(np.repeat(folds[:, None], 200_000, 1), rng)
    half = stats.t.ppf(0.975, 4) * folds.std(ddof=1) / math.sqrt(5)
    assert percentile_interval(draws, 0.95) == pytest.approx((folds.mean() - half, folds.mean() + half), abs=2e-3)


# ------------------------------------------------------------------ simulations with a known answer
def test_a_sweep_of_identical_configurations_keeps_the_family_wise_error_rate():
    result = identical_sweep_errors(reps=50, folds=3, n=120, n_boot=2000)
    assert result["family_size"] == 3 * 4  # 3 pairs x 4 metrics; McNemar's 3 x 3 tests are a family of their own
    assert result["fwer"] <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 50), result
    assert 0.01 <= result["size_of_one_bootstrap_test"] <= 0.09, result  # the single test is not vacuous


def test_the_shared_holdout_interval_covers_the_true_difference():
    for folds, tau in ((5, 0.0), (3, 0.4)):
        result = shared_holdout_coverage(reps=300, folds=folds, tau=tau)
        assert result["coverage"] >= 0.95 - 2 * math.sqrt(0.05 * 0.95 / 300) - 0.01, result


# ------------------------------------------------------------------ the report: design, attribute, options
def _write_run(folder, config, fold, frame, record, gaps, n_train=300):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- {config}\n- data.fold={fold}\n")
    frame.drop(columns="correct").to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"val": {}, "test": {"test/acc": float(frame["correct"].mean())},
                                                     "class_names": list(CLASSES),
                                                     "tested_on": {"fingerprint": record, "test_images": len(frame),
                                                                   "class_names": list(CLASSES), "trainer": {}}}))
    (folder / "data_report.json").write_text(json.dumps({"counts": {"split": {"train": n_train, "test": len(frame)}}}))
    (folder / "bias_report.json").write_text(json.dumps({"min_group_size": 30, "gaps": gaps}))


def _gender_gap(frame):
    by_group = frame.groupby("gender")["correct"].mean()
    return {"attribute": "gender", "metric": "accuracy", "gap": float(by_group.max() - by_group.min())}


def test_the_same_attributes_gap_is_compared_never_the_largest(tmp_path):
    rng = np.random.default_rng(5)
    difficulty = rng.normal(1.1, 1.2, 160)
    for c, shift in (("seed=0", 0.0), ("seed=1", 0.2)):
        for fold in range(3):
            frame = _frame(rng, difficulty, shift)
            race = {"attribute": "race", "metric": "accuracy", "gap": 0.5 if fold % 2 else 0.0}  # largest in some
            _write_run(tmp_path / f"{c}_{fold}", c, fold, frame, "t", [_gender_gap(frame), race])
    result = write_comparison([tmp_path], tmp_path / "out")
    runs = result["runs"]
    assert runs.attrs["gap_attribute"] == "gender" and result["family"]["gap_attribute"] == "gender"
    expected = [_gender_gap(pd.read_csv(tmp_path / f"{r['config']}_{r['fold']}" / "predictions.csv").assign(
        correct=lambda f: f["label"] == f["prediction"]))["gap"] for _, r in runs.iterrows()]
    assert list(runs["gap"]) == pytest.approx(expected)
    assert {p["metric"] for p in result["pairs"] if p["test"] == "bootstrap"} == {"accuracy", "macro_f1", "ece", "gap"}
    assert "gender gap" in result["markdown"] and "largest" not in result["markdown"].split("## Runs")[0].lower()
    race = write_comparison([tmp_path], tmp_path / "race", primary_attribute="race")
    assert set(race["runs"]["gap"]) == {0.0, 0.5} and not any(
        p["metric"] == "gap" for p in race["pairs"])  # predictions.csv has no race column: not resampled, said
    assert any("cannot be recomputed" in n for n in race["notes"])


def test_primary_metric_and_false_discovery_correction_are_declared(tmp_path):
    rng = np.random.default_rng(6)
    difficulty = rng.normal(1.1, 1.2, 160)
    for c, shift in (("lr=0.1", 0.0), ("lr=0.2", 1.5)):
        for fold in range(3):
            frame = _frame(rng, difficulty, shift)
            _write_run(tmp_path / f"{c}_{fold}", c, fold, frame, "t", [_gender_gap(frame)])
    result = write_comparison([tmp_path], tmp_path / "out", primary_metric="macro_f1", correction="fdr_bh")
    over_folds = [p for p in result["pairs"] if p["test"] == "bootstrap"]
    assert [p["metric"] for p in over_folds if p["role"] == "confirmatory"] == ["macro_f1"]
    for name in ("configurations", "models"):  # each declared family corrected on its own
        members = [p for p in result["pairs"] if p["family"] == name]
        raw_family = [p["p_value"] for p in members]
        assert [p["p_adjusted"] for p in members] == pytest.approx(multipletests(raw_family, method="fdr_bh")[1])
    raw = [p["p_value"] for p in result["pairs"] if p["family"] == "configurations"]
    assert result["configurations"]["config"].iloc[0] == "lr=0.2"
    markdown = result["markdown"]
    assert "Benjamini-Hochberg" in markdown and f"family of {len(raw)}" in markdown and "macro-F1" in markdown
    assert f"{100 * (1 - 0.05 / len(raw)):.2f}".rstrip("0") in markdown  # the simultaneous level, said


def test_folds_tested_on_their_own_images_get_the_nadeau_bengio_test(tmp_path):
    rng = np.random.default_rng(7)
    for fold in range(3):
        difficulty = rng.normal(1.1, 1.2, 120)
        for c, shift in (("lr=0.1", 0.0), ("lr=0.2", 0.3)):
            frame = _frame(rng, difficulty, shift).assign(path=lambda f, k=fold: f["path"].str.replace("/d/", f"/f{k}/"))
            _write_run(tmp_path / f"{c}_{fold}", c, fold, frame, f"fold{fold}", [_gender_gap(frame)])
    result = write_comparison([tmp_path], tmp_path / "out")
    assert result["family"]["design"] == "per_fold" and result["runs"].attrs["design"] == "per_fold"
    assert {p["test"] for p in result["pairs"]} == {"nadeau_bengio", "mcnemar_exact"}
    assert len(result["configurations"]) == 2  # folds of one configuration are pooled, not kept apart
    assert "per-fold test sets" in result["markdown"]
    # one configuration's folds on different data with nobody to share them: still refused as a mistake
    other = tmp_path / "other"
    for fold in range(2):
        _write_run(other / f"x_{fold}", "lr=0.1", fold, _frame(rng, rng.normal(1, 1, 120)), f"d{fold}", [])
        _write_run(other / f"y_{fold}", "lr=0.2", fold, _frame(rng, rng.normal(1, 1, 120)), "d0", [])
    with pytest.raises(Exception, match="not tested on the same data"):
        write_comparison([other], tmp_path / "out2")


def test_one_fold_shows_no_std_and_an_interval_conditional_on_its_run(tmp_path):
    rng = np.random.default_rng(8)
    difficulty = rng.normal(1.1, 1.2, 160)
    for c in ("lr=0.1", "lr=0.2"):
        frame = _frame(rng, difficulty)
        _write_run(tmp_path / c, c, 0, frame, "t", [_gender_gap(frame)])
    result = write_comparison([tmp_path], tmp_path)
    configs = result["configurations"]
    assert configs["accuracy_std"].isna().all() and configs["accuracy_low"].notna().all()
    assert "(one fold: no std)" in result["markdown"] and "± 0.0000" not in result["markdown"]
    assert all(p["conditional_on"].startswith("the one training run") for p in result["pairs"] if p["test"] == "bootstrap")
    write_summary(tmp_path)
    summary = (tmp_path / "cv_summary.md").read_text()
    assert "(one fold: no std)" in summary and "± 0.0000" not in summary and "sample std (ddof = 1)" in summary


if __name__ == "__main__":  # the README's figures
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    print("identical configurations, common accuracy:", identical_sweep_errors(reps))
    print("identical configurations, training variability tau=0.3:", identical_sweep_errors(reps, tau=0.3))
    for folds, tau in ((5, 0.0), (5, 0.3), (5, 0.6), (3, 0.3), (10, 0.3)):
        print("coverage:", shared_holdout_coverage(2 * reps, folds=folds, tau=tau))

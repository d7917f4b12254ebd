"""Is configuration A really better than B? Intervals per configuration and one declared family of tests.

Every metric is measured on the TEST split, from each run's ``predictions.csv`` (accuracy, macro-F1, ECE:
top-label, 15 equal-width confidence bins) and ``bias_report.json`` (the *gap* of one attribute: its best
minus its worst ranked group in the audit's primary metric). The gap compared is always the same attribute's
(``primary_attribute``; by default the first attribute whose gap every run reports, e.g. gender), never a
maximum over attributes, whose attribute would change from run to run.

**Two designs**, told apart from what each run was tested on (``tested_on`` of metrics.json, or the paths
of predictions.csv for runs of an older maskdet):

- *shared holdout* (what ``data.fold`` sweeps do: every fold trains on its part of the data and is tested on
  the one holdout test split). The folds' spread is training variability given this test split; the test
  split is one sample of images. Both are resampled by a *paired two-level bootstrap*: each resample draws
  the test images with replacement (the same images for every configuration, so the comparison is paired)
  and recomputes every run's metrics on them; the fold level is then drawn around the resample's mean over
  folds from Student's t with k - 1 degrees of freedom, scaled by the resample's sample std over folds /
  sqrt(k) (resampling only k <= 10 folds with replacement would shrink their variance by (k - 1)/k and give
  normal tails). The interval is the percentile interval of these draws, the p-value the two-sided one that
  matches it (2 min(P*(d <= 0), P*(d >= 0)), counts + 1 over resamples + 1). Per configuration the same
  two-level bootstrap gives the interval of its mean over folds; a configuration or pair with one fold has
  no training level: its interval is conditional on that training run, and says so.
- *per-fold test sets* (each fold tested on its own images, the same images for every configuration of that
  fold: every fold's runs share one ``tested_on`` and the folds' differ): the Nadeau-Bengio corrected
  resampled t-test of the per-fold differences (variance inflated by ``1/k + n_test/n_train``: the folds'
  training sets overlap), and the same correction for each configuration's interval. maskdet's training
  does not produce this design today (``data.fold`` picks the validation fold; the test split is one
  holdout), so it is met only with runs tested otherwise, e.g. re-tested per fold with maskdet.evaluate.

McNemar's exact test per fold (the two runs' paired predictions on the same images, Newcombe's interval)
asks whether these two trained models differ, not the configurations: with training variability, two runs
of identical configurations do differ a little.

**Two declared families per report.** Every test over folds of a comparison (every metric and pair) is
one family, the configurations', corrected together with Holm's method (family-wise error) or, with
``correction="fdr_bh"``, Benjamini-Hochberg (false discovery rate) at ``alpha``
(``maskdet.evaluation.bias.adjust_p_values``, the values of statsmodels' ``multipletests``). The primary
metric's (``primary_metric``, accuracy by default) configuration-level test of each pair is the
confirmatory one; the others are secondary, in the same family. McNemar's tests form a second family of
their own (the trained models'), corrected among themselves: in one family with the configurations' tests
they made identical configurations look different in 60 % of simulated sweeps with training noise (two
trained models do differ). Every interval of the tests is at its family's
simultaneous Bonferroni level 1 - alpha/m for the m tests, so all cover together; Holm's step-down (or
Benjamini-Hochberg) may call a difference significant whose interval touches 0. Per-configuration intervals
are pointwise 95 % intervals: they describe, they do not test. Stds are sample stds (ddof = 1) over folds; a
configuration with one fold has none.

Only like is compared with like. Each run's metrics.json records what it was tested on (``tested_on``:
a fingerprint of the test images' contents and labels, their number, the class names, the trainer
settings that matter; ``maskdet.evaluation.holdout``). Refused, with a message naming the runs of each
kind (DataError): runs tested on different data (another fingerprint, number of images or class names),
whether they would be pooled in one configuration or compared across two, unless they form the per-fold
design above. Runs written by an older maskdet carry no record: among recorded runs they are left out
(named in the notes); when no run has a record, they are compared by the image paths and labels their
predictions.csv lists, and refused when those differ. Runs of one configuration trained with different
trainer settings (a sweep job resumed with another ``trainer.max_epochs`` keeps the sweep's overrides) are
never pooled: each setting becomes a configuration of its own, named in the notes (``cv.keep_apart``). A
run left out of a figure (ECE from confidences that are not finite numbers in [0, 1]; no gap of the primary
attribute) is named in the notes, and the figure gives the number of runs behind each interval. Runs of
the same test images listed under other paths cannot be paired image by image: their images are resampled
independently (an unpaired, conservative bootstrap), and they get no McNemar test. Names read from files
(overrides, paths, errors) are escaped in every file written (``maskdet.writing``), and every file is
written through it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from maskdet import runfolder  # noqa: E402
from maskdet.data.demographics import UNKNOWN  # noqa: E402
from maskdet.errors import DataError  # noqa: E402
from maskdet.evaluation.bias import with_group_columns  # noqa: E402
from maskdet.evaluation.cv import collect_jobs, keep_apart, per_fold_test, run_folders  # noqa: E402
from maskdet.evaluation.metrics import ECE_BINS, expected_calibration_error, macro_f1  # noqa: E402
from maskdet.evaluation.options import COMPARISON, CORRECTIONS, ComparisonOptions  # noqa: E402
from maskdet.evaluation.options import COMPARISON_METRICS as METRICS  # noqa: E402
from maskdet.evaluation.statistics import (  # noqa: E402
    bootstrap_p_value,
    correct_family,
    corrected_t_test,
    mcnemar_exact,
    percentile_interval,
    two_level_bootstrap,
)
from maskdet.jsonfile import write_json  # noqa: E402
from maskdet.writing import md, one_line, percent, plot_text, save_figure, write_csv, write_text  # noqa: E402

LOWER_IS_BETTER = {"ece", "gap"}
# comparison/default.yaml's: the level, the image resamples of the two-level bootstrap (the smallest p-value is
# 2/(B+1)) and its seed
ALPHA, N_BOOT, SEED = COMPARISON.alpha, COMPARISON.n_boot, COMPARISON.seed
ECE_TEXT = f"top-label, {ECE_BINS} equal-width confidence bins"
LIKE = ["test_data", "test_images", "class_names", "trainer"]  # what each run was tested on (cv.tested_on)
PAIR_COLUMNS = ["a", "b", "metric", "test", "family", "role", "fold", "difference", "ci_low", "ci_high", "interval",
                "interval_level", "p_value", "p_adjusted", "correction", "significant", "mean_a", "mean_b",
                "n_folds", "conditional_on", "n_test", "n_train", "n", "a_only_correct", "b_only_correct"]
TESTS = {"bootstrap": "paired two-level bootstrap (test images and folds)",
         "nadeau_bengio": "Nadeau-Bengio corrected resampled t-test",
         "mcnemar_exact": "McNemar's exact test (one fold's two runs)"}


def run_metrics(run_dir: str | Path) -> tuple[dict, pd.DataFrame]:
    """A finished run's test metrics, every attribute's gap from its bias report and the split sizes; and its
    predictions indexed by path and label (with the demographic group columns and ``correct``)."""
    run_dir = Path(run_dir)
    predictions = pd.read_csv(run_dir / runfolder.PREDICTIONS)
    frame = with_group_columns(predictions)
    frame["correct"] = (frame["label"] == frame["prediction"]).to_numpy(bool)
    frame["confidence"] = pd.to_numeric(frame["confidence"], errors="coerce").astype(float)
    frame.index = (frame["path"].astype(str) + "\t" + frame["label"].astype(str)).to_numpy()
    confidence = frame["confidence"].to_numpy(float)
    calibrated = bool(np.isfinite(confidence).all() and ((confidence >= 0) & (confidence <= 1)).all())
    figures = {
        "accuracy": float(frame["correct"].mean()),
        "macro_f1": float(macro_f1(frame["label"].to_numpy(), frame["prediction"].to_numpy())[0]),
        # a confidence that is not a number in [0, 1] has no calibration bin: no ECE (named in the notes)
        "ece": float(expected_calibration_error(confidence, frame["correct"].to_numpy())[0]) if calibrated else math.nan,
    }
    bias_path = run_dir / runfolder.BIAS_REPORT
    report = json.loads(bias_path.read_text()) if bias_path.is_file() else {}
    figures["gaps"] = {str(g["attribute"]): g for g in report.get("gaps", []) if g.get("gap") is not None}
    figures["min_group_size"] = report.get("min_group_size", 30)
    report_path = run_dir / runfolder.DATA_REPORT
    split = json.loads(report_path.read_text()).get("counts", {}).get("split", {}) if report_path.is_file() else {}
    figures.update(n_train=split.get("train"), n_val=split.get("val"), n_test=split.get("test", len(predictions)))
    return figures, frame


def primary_attribute_of(gaps: list[dict], requested: str | None = None) -> str | None:
    """The attribute whose gap is compared: ``requested``, else the first (in report order) whose gap every
    run reports, else the first any run reports (the runs without it are named)."""
    if requested:
        return requested
    order = list(dict.fromkeys(a for g in gaps for a in g))
    everywhere = [a for a in order if all(a in g for g in gaps)]
    return (everywhere or order or [None])[0]


def load_runs(paths, primary_attribute: str | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], list[str]]:
    """The usable runs under ``paths`` (one row each: configuration, fold, figures), their predictions by run
    folder, and a note for every run left out and why. Runs tested on different data are refused
    (``require_same_test_data``) unless every fold is tested on its own images (``cv.per_fold_test``); a
    configuration's runs trained differently are kept apart. ``runs.attrs`` holds the design and the
    attribute whose gap is compared."""
    folders = list(dict.fromkeys(p.resolve() for p in run_folders(paths)))
    jobs = collect_jobs(folders) if folders else collect_jobs([])
    rows, data, notes, gaps = [], {}, [], []
    for _, job in jobs.iterrows():
        where = f"{job['run_dir']} ({job['config']}, fold {job['fold']})"
        if job["status"] != "ok":
            notes.append(f"left out {where}: the run failed: {job['error']}")
        elif not (Path(job["run_dir"]) / runfolder.PREDICTIONS).is_file():
            notes.append(f"left out {where}: no predictions.csv (the run was not tested: test=false?)")
        else:
            try:
                figures, data[job["run_dir"]] = run_metrics(job["run_dir"])
            except (KeyError, ValueError, TypeError, AttributeError) as err:  # a hand-edited or truncated file
                notes.append(f"left out {where}: predictions.csv, bias_report.json or data_report.json cannot "
                             f"be read ({type(err).__name__}: {err}); re-test the run with maskdet.evaluate")
                continue
            gaps.append(figures.pop("gaps"))
            fold = "-" if pd.isna(job["fold"]) else job["fold"]
            rows.append({"config": job["config"], "repeat_of": job["repeat_of"], "fold_seed": job["fold_seed"], "fold": fold, "run_dir": job["run_dir"], **figures,
                         **job[["status", *LIKE]].to_dict()})
    attribute = primary_attribute_of(gaps, primary_attribute)
    for row, run_gaps in zip(rows, gaps):
        gap = run_gaps.get(attribute) if attribute else None
        row.update(gap=float(gap["gap"]) if gap else math.nan, gap_metric=gap.get("metric", "accuracy") if gap else None)
    columns = ["config", "repeat_of", "fold_seed", "fold", "run_dir", *METRICS, "gap_metric", "min_group_size", "n_train", "n_val", "n_test",
               "status", *LIKE]
    runs = pd.DataFrame(rows, columns=columns)
    runs, design = require_same_test_data(runs, data, notes)
    notes += keep_apart(runs)
    for base, configs in runs.groupby("repeat_of", sort=False)["config"]:  # after keep_apart: the names shown
        if configs.nunique() > 1:
            which = "" if base == "(one configuration)" else f" ({base})"
            notes.append(f"{', '.join(configs.unique())} differ only in data.fold_seed: they are repeats of one "
                         f"configuration{which} on other partitions of the training pool (repeated k-fold), so a "
                         "difference between them is training variability, not an effect, and fold k of one is not "
                         "fold k of another; they are not tested against each other")
    if len(runs) and runs["gap_metric"].nunique() > 1:
        notes.append(f"the runs' bias reports measure the {attribute} gap in different metrics "
                     f"({', '.join(map(str, runs['gap_metric'].dropna().unique()))}): the gap column mixes them")
    notes += _left_out_of_metrics(runs, attribute)
    runs.attrs.update(design=design, gap_attribute=attribute)
    return runs, data, notes


def _as_listed(run: pd.Series, frame: pd.DataFrame) -> dict:
    """What a run without a ``tested_on`` record (an older maskdet) shows of its test data: the image paths
    and labels its predictions.csv lists, and the class names of its metrics.json."""
    listed = hashlib.sha256("\n".join(sorted(frame.index)).encode()).hexdigest()[:12]
    metrics = json.loads((Path(run["run_dir"]) / runfolder.METRICS).read_text())
    classes = one_line(", ".join(map(str, metrics.get("class_names") or ["unknown"])))
    return {"test_data": f"{len(frame)} images listed in predictions.csv (paths and labels {listed}), classes "
                         f"{classes}", "test_images": len(frame), "class_names": classes}


def require_same_test_data(runs: pd.DataFrame, data: dict, notes: list[str]) -> tuple[pd.DataFrame, str]:
    """Refuse runs tested on different data (a pooled interval or a paired test of them would compare
    different test sets), unless each fold was tested on its own images shared by every configuration
    (the per-fold design); leave out, with a note, runs without a record when others have one. Returns the
    runs and the design: ``shared`` (one test split for every run) or ``per_fold``."""
    recorded = runs["test_data"].notna()
    if recorded.any() and not recorded.all():
        notes.append("left out (no record of what they were tested on: written by an older maskdet; re-test "
                     f"them with maskdet.evaluate to compare them): {_run_list(runs.loc[~recorded, 'run_dir'])}")
        runs = runs[recorded].reset_index(drop=True)
    elif len(runs) and not recorded.any():
        listed = pd.DataFrame([_as_listed(run, data[run["run_dir"]]) for _, run in runs.iterrows()])
        runs = runs.assign(**{column: listed[column].to_numpy() for column in listed})
        notes.append("no run records what it was tested on (written by an older maskdet): test data compared by "
                     "the image paths and labels of each predictions.csv only, not the images' contents")
    kinds = runs.groupby("test_data", sort=False)
    if len(kinds) <= 1:
        return runs, "shared"
    if per_fold_test(runs):
        notes.append(f"each of the {runs['fold'].nunique()} folds was tested on its own images (the same for every "
                     "configuration of that fold): pairs are tested with the Nadeau-Bengio corrected resampled "
                     "t-test over folds and McNemar's test within each fold")
        return runs, "per_fold"
    how = "their class names differ" if runs["class_names"].nunique() > 1 else \
        "they hold different numbers of test images" if runs["test_images"].nunique() > 1 else \
        "the same number of test images and the same classes, but different images or labels"
    described = "; ".join(f"test data {data}: {_run_list(group['run_dir'])}" for data, group in kinds)
    raise DataError(f"These runs were not tested on the same data ({how}), so they cannot be pooled into one "
                    "configuration or compared: a paired test needs the same test images, and so does an "
                    f"interval over folds. {described}. Compare each group on its own (python -m "
                    "maskdet.compare <its run folders>), or test the runs on one dataset with maskdet.evaluate.")


def _run_list(folders, shown: int = 6) -> str:
    folders = [one_line(f) for f in folders]
    return ", ".join(folders[:shown]) + (f" and {len(folders) - shown} more" if len(folders) > shown else "")


WHY_LEFT_OUT = {"ece": "its predictions.csv holds confidences that are not numbers in [0, 1]",
                "gap": "its bias_report.json has no gap for this attribute (fewer than two groups of at least "
                       "bias.min_group_size test images), or there is no bias_report.json"}


def _left_out_of_metrics(runs: pd.DataFrame, attribute: str | None) -> list[str]:
    """A note per figure naming the runs it leaves out (when some, not all, lack it: when all do, the
    figure's column is empty and says so)."""
    notes = []
    for metric, title in METRICS.items():
        missing = runs[runs[metric].isna()]
        if 0 < len(missing) < len(runs):
            title = f"the {attribute} gap" if metric == "gap" else title
            notes.append(f"{title} leaves out {len(missing)} run(s) ({WHY_LEFT_OUT.get(metric, 'no figure')}): "
                         f"{_run_list(missing['run_dir'])}; its intervals hold the others (n in "
                         "comparison_configurations.csv and comparison.png)")
    return notes


# ------------------------------------------------------------------ the statistics
def resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` bootstrap resamples of ``n`` images as multiplicities, one resample a row (B x n): every
    figure of a resample is then a matrix product, and one draw serves every run tested on these images."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (np.arange(n_boot)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _group_counts(frame: pd.DataFrame, attribute: str | None, metric: str | None, min_group_size: int):
    """(successes, trials) indicator columns (n x groups) of the gap's metric in the attribute's ranked
    groups (at least ``min_group_size`` images, not unknown), as the bias audit ranks them."""
    if not attribute or attribute not in frame or metric is None:
        return None
    groups = frame[attribute].astype(str).to_numpy()
    label = frame["label"].astype(str).to_numpy()
    correct = frame["correct"].to_numpy(bool)
    success, trials = [], []
    for group in pd.unique(groups):
        member = groups == group
        if group == UNKNOWN or member.sum() < min_group_size:
            continue
        counted = member if metric == "accuracy" else member & (label == metric.removeprefix("recall_"))
        if counted.any():
            success.append(counted & correct)
            trials.append(counted)
    if len(success) < 2:
        return None
    return np.column_stack(success).astype(float), np.column_stack(trials).astype(float)


def resampled_metrics(frame: pd.DataFrame, weights: np.ndarray, gap: tuple | None = None) -> dict[str, np.ndarray]:
    """Every metric of one run on each resample of its test images (``weights``: B x n multiplicities, in the
    order of ``frame``): accuracy, macro-F1 (``metrics.macro_f1``'s convention), ECE (``metrics.
    expected_calibration_error``'s bins) and, with ``gap`` (``_group_counts``), the gap between the best and
    the worst ranked group. The same values as those functions on the resampled rows (tests)."""
    n = weights.shape[1]
    correct = frame["correct"].to_numpy(float)
    label, prediction = frame["label"].astype(str).to_numpy(), frame["prediction"].astype(str).to_numpy()
    classes = np.unique(np.concatenate([label, prediction]))
    confidence = frame["confidence"].to_numpy(float)
    calibrated = bool(np.isfinite(confidence).all() and ((confidence >= 0) & (confidence <= 1)).all())
    columns = [correct[:, None]]  # every sum a resample needs, as columns of one matrix product
    columns += [np.column_stack([(label == c) & (prediction == c) for c in classes]).astype(float),
                np.column_stack([(label == c) != (prediction == c) for c in classes]).astype(float)]
    if calibrated:
        edges = np.linspace(0, 1, ECE_BINS + 1)
        in_bin = np.eye(ECE_BINS)[np.clip(np.digitize(confidence, edges[1:-1]), 0, ECE_BINS - 1)]  # n x bins
        columns += [in_bin * confidence[:, None], in_bin * correct[:, None]]
    if gap is not None:
        columns += [gap[0], gap[1]]
    sums = weights @ np.hstack(columns)
    out = {"accuracy": sums[:, 0] / n}
    c = len(classes)
    hits, errors = sums[:, 1:1 + c], sums[:, 1 + c:1 + 2 * c]
    occurs = hits + errors > 0
    f1 = np.where(occurs, 2 * hits / np.maximum(2 * hits + errors, 1), 0.0)
    out["macro_f1"] = f1.sum(1) / np.maximum(occurs.sum(1), 1)
    at = 1 + 2 * c
    if calibrated:
        out["ece"] = np.abs(sums[:, at:at + ECE_BINS] - sums[:, at + ECE_BINS:at + 2 * ECE_BINS]).sum(1) / n
        at += 2 * ECE_BINS
    else:
        out["ece"] = np.full(len(weights), math.nan)
    if gap is not None:
        g = gap[0].shape[1]
        success, trials = sums[:, at:at + g], sums[:, at + g:at + 2 * g]
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(trials > 0, success / np.where(trials > 0, trials, 1), np.nan)
        out["gap"] = np.nanmax(value, axis=1) - np.nanmin(value, axis=1)
    else:
        out["gap"] = np.full(len(weights), math.nan)
    return out


# ------------------------------------------------------------------ resampling every run, per configuration
def resample_runs(runs: pd.DataFrame, data: dict[str, pd.DataFrame], n_boot: int = N_BOOT, seed: int = SEED,
                  notes: list[str] | None = None) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Every run's metrics on ``n_boot`` resamples of its test images: runs that list the same images (paths
    and labels) share one draw of resamples, so a comparison of them is paired. Returns the resampled metrics
    and each run's image set (its key). A gap the bias report gives but predictions.csv cannot reproduce (no
    group columns) is not resampled, and named."""
    rng = np.random.default_rng(seed)
    draws, keys, resampled, unmatched = {}, {}, {}, []
    for _, run in runs.iterrows():
        frame = data[run["run_dir"]].sort_index(kind="stable")
        key = hashlib.sha256("\n".join(frame.index).encode()).hexdigest()
        if key not in draws:
            draws[key] = resample_weights(len(frame), n_boot, rng)
        keys[run["run_dir"]] = key
        counts = _group_counts(frame, runs.attrs.get("gap_attribute"), run["gap_metric"], int(run["min_group_size"])) \
            if pd.notna(run["gap"]) else None
        if counts is not None:
            value = counts[0].sum(0) / counts[1].sum(0)
            if abs(float(value.max() - value.min()) - run["gap"]) > 1e-9:
                counts = None
        if counts is None and pd.notna(run["gap"]):
            unmatched.append(run["run_dir"])
        resampled[run["run_dir"]] = resampled_metrics(frame, draws[key], counts)
    if unmatched and notes is not None:
        notes.append(f"the {runs.attrs.get('gap_attribute')} gap of the bias report cannot be recomputed from "
                     f"predictions.csv (no group columns, or other groups) for {_run_list(unmatched)}: its test "
                     "images cannot be resampled, so it gets no interval or test there")
    return resampled, keys


def configuration_intervals(runs: pd.DataFrame, resampled: dict | None = None, primary_metric: str = "accuracy",
                            design: str = "shared") -> pd.DataFrame:
    """Per configuration: runs, and per metric the mean over folds, its sample std (ddof = 1; none for one
    fold), n, and a pointwise 95 % interval: the two-level bootstrap (shared holdout; ``resampled``), or the
    Nadeau-Bengio corrected t interval (per-fold test sets). Best ``primary_metric`` first."""
    rng = np.random.default_rng(SEED + 1)
    rows = []
    for config, group in runs.groupby("config", sort=False):
        row = {"config": config, "folds": len(group)}
        for metric in METRICS:
            values = group[metric].to_numpy(float)
            valid = np.isfinite(values)
            k = int(valid.sum())
            row.update({f"{metric}_n": k, metric: float(values[valid].mean()) if k else math.nan,
                        f"{metric}_std": float(values[valid].std(ddof=1)) if k >= 2 else math.nan,
                        f"{metric}_low": math.nan, f"{metric}_high": math.nan})
            if design == "shared" and resampled is not None and k:
                stacked = np.vstack([resampled[r][metric] for r in group.loc[valid, "run_dir"]])
                if np.isfinite(stacked).all():
                    draws = two_level_bootstrap(stacked, rng, values[valid])
                    row[f"{metric}_low"], row[f"{metric}_high"] = percentile_interval(draws, 0.95)
            elif design == "per_fold" and k >= 2:
                sizes = group.loc[valid, ["n_test", "n_train"]].astype(float).mean()
                if sizes["n_train"] > 0:
                    result = corrected_t_test(values[valid], sizes["n_train"], sizes["n_test"])
                    row[f"{metric}_low"], row[f"{metric}_high"] = result["ci_low"], result["ci_high"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if not rows:
        return table
    return table.sort_values(primary_metric, ascending=primary_metric in LOWER_IS_BETTER, kind="stable",
                             na_position="last").reset_index(drop=True)


def _one_run_per_fold(group: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    repeated = group[group.duplicated("fold", keep=False)]
    for fold in repeated["fold"].unique():
        notes.append(f"{group['config'].iloc[0]}: {int((group['fold'] == fold).sum())} runs of fold {fold} "
                     f"({_run_list(repeated.loc[repeated['fold'] == fold, 'run_dir'])}); that fold is left out of "
                     "the paired tests (which run would pair is ambiguous), kept in the intervals")
    return group.drop_duplicates("fold", keep=False).set_index("fold")


def compare_pairs(runs: pd.DataFrame, data: dict[str, pd.DataFrame], order: list[str], notes: list[str],
                  primary_metric: str = COMPARISON.primary_metric, correction: str = COMPARISON.correction, alpha: float = ALPHA,
                  resampled: dict | None = None, keys: dict | None = None, design: str | None = None,
                  seed: int = SEED) -> tuple[list[dict], dict]:
    """Every pair of configurations (better ``primary_metric`` first): per metric the configuration-level
    test over the folds both ran (two-level bootstrap on a shared holdout, Nadeau-Bengio on per-fold test
    sets), and McNemar per fold both tested on the same images; all of them one family corrected with
    ``correction``, every interval at the family's simultaneous Bonferroni level. Returns the pairs and the
    family's declaration."""
    design = design or runs.attrs.get("design", "shared")
    if design == "shared" and resampled is None:
        resampled, keys = resample_runs(runs, data, seed=seed, notes=notes)
    rng = np.random.default_rng(seed + 2)
    by_config = {c: _one_run_per_fold(g, notes) for c, g in runs.groupby("config", sort=False)}
    metrics = list(METRICS)
    if runs["gap"].isna().all():
        metrics.remove("gap")
        notes.append("no run has a gap of the compared attribute (it needs two groups of at least "
                     "bias.min_group_size test images), so the gap column is empty and untested")
    tests, unpaired = [], []
    first = runs.drop_duplicates("config").set_index("config")
    repeat_of = first["repeat_of"] if "repeat_of" in runs else pd.Series(dtype=object)
    partition = first["fold_seed"] if "fold_seed" in runs else pd.Series(dtype=object)
    across = 0
    for a, b in itertools.combinations(order, 2):
        if a in repeat_of and repeat_of.get(a) == repeat_of.get(b):
            continue  # repeats of one configuration (data.fold_seed): not a hypothesis, so not in the family (load_runs notes it)
        if pd.notna(partition.get(a)) and pd.notna(partition.get(b)) and partition.get(a) != partition.get(b):
            across += 1  # other partitions: fold k of one is not fold k of the other, so no pairing by fold
            continue
        ra, rb = by_config[a], by_config[b]
        folds = [f for f in ra.index if f in rb.index]
        if not folds:
            notes.append(f"{a} vs {b}: no fold run by both, so no paired test")
            continue
        for metric in metrics:
            both = [f for f in folds if pd.notna(ra.at[f, metric]) and pd.notna(rb.at[f, metric])]
            base = {"a": a, "b": b, "metric": metric, "fold": None, "n_folds": len(both),
                    "mean_a": ra.loc[both, metric].mean() if both else math.nan,
                    "mean_b": rb.loc[both, metric].mean() if both else math.nan}
            observed = (ra.loc[both, metric] - rb.loc[both, metric]).to_numpy(float)
            if design == "shared":
                if not both:
                    continue
                diffs = np.vstack([resampled[ra.at[f, "run_dir"]][metric] - resampled[rb.at[f, "run_dir"]][metric]
                                   for f in both])
                if not np.isfinite(diffs).all():
                    continue  # a gap that cannot be resampled (named in the notes)
                if any(keys[ra.at[f, "run_dir"]] != keys[rb.at[f, "run_dir"]] for f in both):
                    unpaired.append(f"{a} vs {b}")
                draws = two_level_bootstrap(diffs, rng, observed)
                tests.append({**base, "test": "bootstrap", "difference": float(observed.mean()), "_draws": draws,
                              "p_value": bootstrap_p_value(draws), "n_test": float(runs["n_test"].mean()),
                              "conditional_on": "the one training run of each configuration" if len(both) == 1
                              else "nothing: test images and training runs resampled"})
                continue
            if len(both) < 2:
                notes.append(f"{a} vs {b}, {metric}: no Nadeau-Bengio test ({len(both)} fold(s) with the figure "
                             "in both; it needs two or more)")
                continue
            sizes = pd.concat([ra.loc[both, ["n_test", "n_train"]], rb.loc[both, ["n_test", "n_train"]]]).astype(float)
            n_test, n_train = sizes["n_test"].mean(), sizes["n_train"].mean()
            if not n_train > 0:
                notes.append(f"{a} vs {b}, {metric}: no Nadeau-Bengio test (training-set sizes unknown: no "
                             "data_report.json in the run folders)")
                continue
            result = corrected_t_test(observed, n_train, n_test)
            if math.isnan(result["p_value"]):
                notes.append(f"{a} vs {b}, {metric}: the same non-zero difference on every fold, so the t "
                             "statistic is undefined (no p-value)")
            tests.append({**base, **result, "test": "nadeau_bengio", "n_test": n_test, "n_train": n_train,
                          "_differences": observed, "conditional_on": "-"})
        for fold in folds:
            ca, cb = data[ra.at[fold, "run_dir"]]["correct"], data[rb.at[fold, "run_dir"]]["correct"]
            if set(ca.index) != set(cb.index) or ca.index.has_duplicates:
                notes.append(f"{a} vs {b}, fold {fold}: the two runs were tested on different images "
                             "(paths or labels in predictions.csv differ, or a path is listed twice), so no McNemar test")
                continue
            cb = cb.loc[ca.index]
            pair = (ca.to_numpy(bool), cb.to_numpy(bool))
            tests.append({"a": a, "b": b, "metric": "accuracy", "test": "mcnemar_exact", "fold": fold,
                          "mean_a": float(ca.mean()), "mean_b": float(cb.mean()), "_pair": pair,
                          "conditional_on": "these two trained models", **mcnemar_exact(*pair)})
    if across:
        notes.append(f"{across} pairs of configurations on different partitions (data.fold_seed) were not tested: "
                     "each pair of configurations is tested within each repeat, where fold k is the same data")
    if unpaired:
        notes.append(f"{'; '.join(unpaired)}: their runs list the same test data under other image paths, so the "
                     "images cannot be paired: each configuration's images were resampled independently (an "
                     "unpaired bootstrap: valid, wider than a paired one)")
    family = declare_family(tests, primary_metric, correction, alpha, design, resampled)
    return [{column: test.get(column) for column in PAIR_COLUMNS} for test in tests], family


def declare_family(tests: list[dict], primary_metric: str, correction: str, alpha: float, design: str,
                   resampled: dict | None) -> dict:
    """Correct the tests in two declared families and put each interval at its family's simultaneous
    Bonferroni level 1 - alpha/m: the **configurations** family (every metric and pair over folds; the
    primary metric's tests are the confirmatory ones) and the **trained models** family (McNemar's test of
    each fold's two runs). McNemar asks whether two trained models differ, which with training variability
    they nearly always do a little: in the configurations' family it made identical configurations look
    different in 60 % of simulated sweeps, so it is corrected on its own and does not enter their verdict."""
    levels = {}
    for name, members in (("configurations", [t for t in tests if t["test"] != "mcnemar_exact"]),
                          ("models", [t for t in tests if t["test"] == "mcnemar_exact"])):
        adjusted = correct_family([t["p_value"] for t in members], correction)
        m = int(np.isfinite(adjusted).sum())
        level = levels[name] = (m, 1 - alpha / max(m, 1))
        for test, p in zip(members, adjusted):
            test.update(p_adjusted=None if math.isnan(p) else float(p), correction=correction, interval_level=level[1],
                        significant=None if math.isnan(p) else bool(p < alpha), family=name,
                        role="confirmatory" if test["metric"] == primary_metric and name == "configurations"
                        else "secondary" if name == "configurations" else "descriptive")
    for test in tests:
        level = test["interval_level"]
        if test["test"] == "bootstrap":
            test["ci_low"], test["ci_high"] = percentile_interval(test.pop("_draws"), level)
            test["interval"] = "percentile, two-level bootstrap"
        elif test["test"] == "nadeau_bengio":
            result = corrected_t_test(test.pop("_differences"), test["n_train"], test["n_test"], confidence=level)
            test["ci_low"], test["ci_high"] = result["ci_low"], result["ci_high"]
            test["interval"] = "corrected t"
        else:
            result = mcnemar_exact(*test.pop("_pair"), confidence=level)
            test["ci_low"], test["ci_high"] = result["ci_low"], result["ci_high"]
            test["interval"] = "Newcombe (paired, score)"
    (m, level), (m_models, level_models) = levels["configurations"], levels["models"]
    n_boot = len(next(iter(next(iter(resampled.values())).values()))) if resampled else None
    return {"size": m, "method": correction, "method_name": CORRECTIONS[correction], "alpha": alpha,
            "primary_metric": primary_metric, "design": design, "interval_level": level,
            "models_size": m_models, "models_interval_level": level_models,
            "interval_simultaneous": "Bonferroni over the family", "n_boot": n_boot,
            "smallest_p": 2 / (n_boot + 1) if n_boot else None,
            "tests": {name: sum(t["test"] == name for t in tests) for name in TESTS}}


# ------------------------------------------------------------------ the report
def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _interval(mean, low, high) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]" if pd.notna(low) else f"{mean:.4f}"


def _p(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.3g}"


def _cell(row: pd.Series, metric: str) -> str:
    """mean ± sample std (n) [interval]; one fold: no std."""
    n = row[f"{metric}_n"]
    if not n:
        return "-"
    spread = f" ± {row[f'{metric}_std']:.4f}" if n >= 2 else " (one fold: no std)"
    interval = f" [{row[f'{metric}_low']:.4f}, {row[f'{metric}_high']:.4f}]" if pd.notna(row[f"{metric}_low"]) else ""
    return f"{row[metric]:.4f}{spread}, n = {n}{interval}"


def titles(attribute: str | None) -> dict[str, str]:
    return {**METRICS, "gap": f"{attribute} gap" if attribute else "gap"}


def format_markdown(configs: pd.DataFrame, pairs: list[dict], runs: pd.DataFrame, notes: list[str],
                    family: dict | None = None) -> str:
    """The comparison as markdown; every name read from a file (configuration, folder, note) passes through
    ``writing.md``: one line, HTML and ``|`` escaped."""
    family = family or declare_family([], "accuracy", "holm", ALPHA, runs.attrs.get("design", "shared"), None)
    attribute, design = runs.attrs.get("gap_attribute"), family["design"]
    names = titles(attribute)
    alpha, m, level, primary = family["alpha"], family["size"], family["interval_level"], family["primary_metric"]
    n_test = runs["n_test"].dropna()
    images = f"{int(n_test.iloc[0])}" if len(n_test) and n_test.nunique() == 1 else "see the runs table"
    if design == "shared":
        how = (f"**Design: shared holdout.** Every run is tested on the same {images} test images; the folds differ "
               "in training data. Configuration intervals and pair tests use a paired two-level bootstrap: each of "
               f"{family['n_boot']} resamples draws the test images with replacement (the same images for every "
               "configuration) and recomputes every run's metrics; the fold level is drawn from Student's t with "
               "k - 1 degrees of freedom scaled by the resample's sample std over folds / sqrt(k). Intervals are "
               "percentile intervals of these draws, p-values the two-sided ones that match them (smallest "
               f"possible {family['smallest_p']:.2g}). With one fold there is no training level: the interval "
               "is conditional on that training run (said in the pair's row). The Nadeau-Bengio corrected "
               "t-test is for folds tested on different images, not this design.")
        interval = "95 % pointwise two-level bootstrap interval (test images and folds resampled)"
    else:
        how = ("**Design: per-fold test sets.** Each fold is tested on its own images, the same for every "
               "configuration of that fold. Pairs: the Nadeau-Bengio corrected resampled t-test over folds (the "
               "variance of the mean difference is inflated by 1/k + n_test/n_train because the folds' training "
               "sets overlap); configuration intervals: the same corrected t interval.")
        interval = "95 % pointwise Nadeau-Bengio corrected t interval over folds"
    lines = ["# Comparison of configurations", "", how, "",
             f"**Conventions.** All metrics are on the test split. ECE: {ECE_TEXT}; binned ECE is biased upwards "
             "on resampled images, so its bootstrap interval can lie above the estimate (a difference of ECEs is "
             f"less affected: the bias is alike in both). {names['gap']}: each run's "
             f"bias_report.json gap for {attribute or 'the compared attribute'} (its best minus its worst ranked "
             "group in the audit's primary metric; the same attribute in every run, never a maximum over "
             "attributes). Lower is better for ECE and the gap. Std: sample std over folds (ddof = 1); a "
             "configuration with one fold has none. n: folds (runs) behind a figure.", "",
             f"**Tests: two declared families.** The configurations' family: every test over folds ({m}: every "
             f"metric and pair), corrected together with {family['method_name']} at {percent(alpha)}. The trained "
             f"models' family: the {family['tests']['mcnemar_exact']} McNemar tests (one per pair and fold), corrected "
             "among themselves; they ask whether two trained models differ and do not enter the configurations' "
             "verdict. The primary metric is "
             f"{METRICS[primary] if primary != 'gap' else names['gap']}: its test over folds is each pair's "
             "confirmatory test; the others are secondary. Every interval of the tests is simultaneous at "
             f"{percent(level)} (Bonferroni over the {m} tests), so all cover together with {percent(1 - alpha)} "
             "probability"
             + ("; Holm's step-down may call a difference significant whose interval touches 0." if family["method"]
                == "holm" else "; they are stricter than the false-discovery verdict, which may call a difference "
                "significant whose interval touches 0.")
             + (f" Note: alpha/m = {alpha / m:.2g} is below 5 x the smallest bootstrap p-value: raise --bootstrap."
                if design == "shared" and m and family["smallest_p"] and alpha / m < 5 * family["smallest_p"] else ""),
             "", f"## Configurations (mean ± sample std, n = folds [{interval}]; best {names[primary]} first)", "",
             "| configuration | runs | " + " | ".join(names.values()) + " |", "|---" * (2 + len(METRICS)) + "|"]
    for _, row in configs.iterrows():
        lines.append(f"| {md(row['config'])} | {row['folds']} | " + " | ".join(_cell(row, m_) for m_ in METRICS) + " |")
    over_folds = sorted((p for p in pairs if p["test"] != "mcnemar_exact"), key=lambda p: p["role"] != "confirmatory")
    lines += ["", f"## Pairs over folds ({TESTS['bootstrap' if design == 'shared' else 'nadeau_bengio']}; "
                  f"{family['method']} over the family of {m})", "",
              f"Difference = a - b, mean over the folds both ran; interval simultaneous at {percent(level)}.", ""]
    if over_folds:
        lines += [f"| role | a | b | metric | folds | difference [{percent(level)} simultaneous] | p | p ({family['method']}) | "
                  "significant | conditional on |", "|---" * 10 + "|"]
        for p in over_folds:
            verdict = "-" if p["significant"] is None else ("yes" if p["significant"] else "no")
            lines.append(f"| {p['role']} | {md(p['a'])} | {md(p['b'])} | {names[p['metric']]} | {p['n_folds']} | "
                         f"{_interval(p['difference'], p['ci_low'], p['ci_high'])} | {_p(p['p_value'])} | "
                         f"{_p(p['p_adjusted'])} | {verdict} | {p['conditional_on']} |")
    else:
        lines.append("No pair of configurations with a fold in common.")
    paired = [p for p in pairs if p["test"] == "mcnemar_exact"]
    m_models, level_models = family.get("models_size", 0), family.get("models_interval_level", level)
    lines += ["", f"## Pairs of trained models on the same images (McNemar's exact test per fold; {family['method']} "
                  f"over their own family of {m_models})", "",
              "These test the two runs of one fold, not the configurations: with training variability, two runs of "
              f"identical configurations differ a little. Interval: Newcombe's paired score interval, simultaneous "
              f"at {percent(level_models)}.", ""]
    if paired:
        lines += [f"| a | b | fold | images | only a right | only b right | accuracy difference [{percent(level_models)} "
                  f"simultaneous] | p | p ({family['method']}) | significant |", "|---" * 10 + "|"]
        for p in paired:
            verdict = "yes" if p["significant"] else "no"
            lines.append(f"| {md(p['a'])} | {md(p['b'])} | {md(p['fold'])} | {p['n']} | {p['a_only_correct']} | "
                         f"{p['b_only_correct']} | {_interval(p['difference'], p['ci_low'], p['ci_high'])} | "
                         f"{_p(p['p_value'])} | {_p(p['p_adjusted'])} | {verdict} |")
    else:
        lines.append("No pair of runs tested on the same images.")
    lines += ["", "## Runs (one test of one model each: no std, no interval)", "",
              "| configuration | fold | " + " | ".join(names.values()) + " | n_train | n_test | run folder |",
              "|---" * (5 + len(METRICS)) + "|"]
    for _, r in runs.iterrows():
        lines.append(f"| {md(r['config'])} | {md(r['fold'])} | " + " | ".join(_fmt(r[m_]) for m_ in METRICS) +
                     f" | {md(r['n_train'])} | {md(r['n_test'])} | {md(r['run_dir'])} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {md(note)}" for note in notes]
    return "\n".join(lines) + "\n"


def plot(configs: pd.DataFrame, path: Path, attribute: str | None = None, design: str = "shared") -> None:
    """One panel per metric: each configuration's mean and pointwise 95 % interval, and the number of runs
    behind it (a run without the figure is left out, and named in comparison.md)."""
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 1.2 + 0.45 * len(configs)),
                             sharey=True, squeeze=False)
    y = np.arange(len(configs))[::-1]
    for ax, (metric, title) in zip(axes[0], titles(plot_text(attribute or "")).items()):
        mean = configs[metric].to_numpy(float)
        low, high = configs[f"{metric}_low"].to_numpy(float), configs[f"{metric}_high"].to_numpy(float)
        err = np.clip(np.nan_to_num(np.vstack([mean - low, high - mean])), 0, None)  # ECE's can exclude its mean
        ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3)
        for row, n in zip(y, configs[f"{metric}_n"]):
            ax.text(0.99, row, f"n={n}", transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=7)
        ax.set_title(f"{title}{' (lower is better)' if metric in LOWER_IS_BETTER else ''}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, [plot_text(c) for c in configs["config"]], fontsize=8)
    method = "two-level bootstrap (test images and folds)" if design == "shared" else "corrected t over folds"
    fig.suptitle(f"Pointwise 95 % intervals, {method}, test split; n: runs with the figure; ECE {ECE_BINS} bins",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_comparison(paths, out_dir: str | Path, primary_metric: str = COMPARISON.primary_metric,
                     correction: str = COMPARISON.correction,
                     alpha: float = ALPHA, primary_attribute: str | None = None, n_boot: int = N_BOOT,
                     seed: int = SEED) -> dict:
    """Compare the runs under ``paths`` and write comparison.md / .csv / .json, comparison_configurations.csv
    and comparison.png into ``out_dir`` (through ``maskdet.writing``: a planted symlink is replaced, never
    written through); return the configurations, pairs, family, runs, notes and the markdown."""
    ComparisonOptions(primary_metric, correction, alpha, primary_attribute, n_boot, seed)  # refused before any work
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{', '.join(missing)} does not exist: pass a sweep folder "
                        "(outputs/<task>/multiruns/<time>) or run folders (outputs/<task>/runs/<time>).")
    runs, data, notes = load_runs(paths, primary_attribute)
    if runs.empty:
        raise DataError(
            f"No usable runs to compare in {', '.join(map(str, paths))}: a usable run folder holds "
            "metrics.json and predictions.csv (written when a training run tests its best checkpoint). "
            + (f"Found {len(notes)} run folder(s), none usable: {one_line('; '.join(notes))}. " if notes else
               "No run folder was found there (a run folder has .hydra/, metrics.json or failed.json). ")
            + "Pass a sweep folder (outputs/<task>/multiruns/<time>) or run folders (outputs/<task>/runs/<time>).")
    design = runs.attrs["design"]
    resampled, keys = resample_runs(runs, data, n_boot, seed, notes) if design == "shared" else (None, None)
    configs = configuration_intervals(runs, resampled, primary_metric, design)
    if len(configs) < 2:
        notes.append("only one configuration: intervals only, no pairs to compare")
    pairs, family = compare_pairs(runs, data, list(configs["config"]), notes, primary_metric, correction, alpha,
                                  resampled, keys, design, seed)
    family.update(gap_attribute=runs.attrs["gap_attribute"], seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(configs, pairs, runs, notes, family)
    write_text(out_dir / "comparison.md", markdown)
    write_csv(pd.DataFrame(pairs, columns=PAIR_COLUMNS), out_dir / "comparison.csv")
    write_json(out_dir / "comparison.json", pairs)
    write_csv(configs, out_dir / "comparison_configurations.csv")
    plot(configs, out_dir / "comparison.png", runs.attrs["gap_attribute"], design)
    return {"configurations": configs, "pairs": pairs, "family": family, "runs": runs, "notes": notes,
            "markdown": markdown}

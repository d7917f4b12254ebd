"""Is configuration A really better than B? Intervals per configuration and tests per pair, over folds.

Every figure is measured on the TEST split, from each run's ``predictions.csv`` (accuracy, macro-F1, ECE)
and ``bias_report.json`` (largest demographic gap). Under k-fold every fold trains on its own part of the
data and is tested on the one holdout test split, so:

- the test figures are those of the checkpoint the run reports, on images no fold trained on or selected
  a checkpoint with (``val/acc_best`` is the maximum over epochs, biased upwards; and there are no
  validation predictions for ECE or the gap);
- across folds, the Nadeau-Bengio corrected resampled t-test pairs the configurations' runs by fold. The
  folds' training sets overlap, so the plain paired t-test is too optimistic; the variance of the mean
  difference is inflated by ``1/k + n_test/n_train``, with ``n_test`` the size of the set the figures are
  measured on (the test split) and ``n_train`` the fold's training set. Because the test split is shared,
  the spread over folds is the spread due to training data and seeds, given this test split;
- on the shared test split, McNemar's exact test on the paired predictions (one test per fold) asks
  whether the two models' errors on the same images differ by more than chance (the test-sampling
  side, which the spread over folds does not see);
- Holm's correction runs over the pairs (and folds) within each test and metric.

Only like is compared with like. Each run's metrics.json records what it was tested on (``tested_on``:
a fingerprint of the test images' contents and labels, their number, the class names, the trainer
settings that matter; ``maskdet.evaluation.testing``). Refused, with a message naming the runs of each
kind (DataError): runs tested on different data (another fingerprint, number of images or class names),
whether they would be pooled in one configuration or compared across two. Runs written by an older
maskdet carry no record: among recorded runs they are left out (named in the notes); when no run has a
record, they are compared by the image paths and labels their predictions.csv lists, and refused when
those differ. Runs of one configuration trained with different trainer settings (a sweep job resumed
with another ``trainer.max_epochs`` keeps the sweep's overrides) are never pooled: each setting becomes
a configuration of its own, named in the notes (``cv.keep_apart``). A run left out of a figure (ECE from
confidences that are not finite numbers in [0, 1]; no demographic gap) is named in the notes, and the
figure gives the number of runs behind each interval. Names read from files (overrides, paths, errors)
are escaped in every file written (``maskdet.writing``), and every file is written through it.
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
from scipy import stats  # noqa: E402

from maskdet import runfolder  # noqa: E402
from maskdet.errors import DataError  # noqa: E402
from maskdet.evaluation.bias import wilson_interval  # noqa: E402
from maskdet.evaluation.cv import collect_jobs, keep_apart, run_folders  # noqa: E402
from maskdet.evaluation.metrics import expected_calibration_error, macro_f1  # noqa: E402
from maskdet.jsonfile import write_json  # noqa: E402
from maskdet.writing import md, one_line, save_figure, write_csv, write_text  # noqa: E402

METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "ece": "ECE", "largest_gap": "largest gap"}
LOWER_IS_BETTER = {"ece", "largest_gap"}
ALPHA = 0.05
LIKE = ["test_data", "test_images", "class_names", "trainer"]  # what each run was tested on (cv.tested_on)
PAIR_COLUMNS = ["a", "b", "metric", "test", "fold", "difference", "ci_low", "ci_high", "p_value", "p_holm",
                "significant", "mean_a", "mean_b", "n_folds", "n_test", "n_train", "n", "a_only_correct",
                "b_only_correct"]


def run_figures(run_dir: str | Path) -> tuple[dict, pd.Series]:
    """A finished run's test figures and split sizes, and its per-image correctness (indexed by path)."""
    run_dir = Path(run_dir)
    predictions = pd.read_csv(run_dir / runfolder.PREDICTIONS)
    correct = predictions["label"] == predictions["prediction"]
    confidence = pd.to_numeric(predictions["confidence"], errors="coerce").to_numpy(float)
    calibrated = bool(np.isfinite(confidence).all() and ((confidence >= 0) & (confidence <= 1)).all())
    figures = {
        "accuracy": float(correct.mean()),
        "macro_f1": float(macro_f1(predictions["label"].to_numpy(), predictions["prediction"].to_numpy())[0]),
        # a confidence that is not a number in [0, 1] has no calibration bin: no ECE (named in the notes)
        "ece": float(expected_calibration_error(confidence, correct.to_numpy())[0]) if calibrated else math.nan,
        "largest_gap": math.nan, "gap_attribute": None,
    }
    bias_path = run_dir / runfolder.BIAS_REPORT
    gaps = [g for g in json.loads(bias_path.read_text()).get("gaps", []) if g.get("gap") is not None] \
        if bias_path.is_file() else []
    if gaps:  # the largest over attributes of each attribute's largest gap between ranked groups
        widest = max(gaps, key=lambda g: g["gap"])
        figures.update(largest_gap=float(widest["gap"]), gap_attribute=widest["attribute"])
    report_path = run_dir / runfolder.DATA_REPORT
    split = json.loads(report_path.read_text()).get("counts", {}).get("split", {}) if report_path.is_file() else {}
    figures.update(n_train=split.get("train"), n_val=split.get("val"), n_test=split.get("test", len(predictions)))
    keyed = pd.Series(correct.to_numpy(), index=predictions["path"] + "\t" + predictions["label"])
    return figures, keyed


def load_runs(paths) -> tuple[pd.DataFrame, dict[str, pd.Series], list[str]]:
    """The usable runs under ``paths`` (one row each: configuration, fold, figures), their per-image
    correctness by run folder, and a note for every run left out and why. Runs tested on different data
    are refused (``require_same_test_data``); a configuration's runs trained differently are kept apart."""
    folders = list(dict.fromkeys(p.resolve() for p in run_folders(paths)))
    jobs = collect_jobs(folders) if folders else collect_jobs([])
    rows, correctness, notes = [], {}, []
    for _, job in jobs.iterrows():
        where = f"{job['run_dir']} ({job['config']}, fold {job['fold']})"
        if job["status"] != "ok":
            notes.append(f"left out {where}: the run failed: {job['error']}")
        elif not (Path(job["run_dir"]) / runfolder.PREDICTIONS).is_file():
            notes.append(f"left out {where}: no predictions.csv (the run was not tested: test=false?)")
        else:
            try:
                figures, correctness[job["run_dir"]] = run_figures(job["run_dir"])
            except (KeyError, ValueError, TypeError) as err:  # a hand-edited or truncated file
                notes.append(f"left out {where}: predictions.csv, bias_report.json or data_report.json cannot "
                             f"be read ({type(err).__name__}: {err}); re-test the run with maskdet.evaluate")
                continue
            fold = "-" if pd.isna(job["fold"]) else job["fold"]
            rows.append({"config": job["config"], "fold": fold, "run_dir": job["run_dir"], **figures,
                         **job[["status", *LIKE]].to_dict()})
    columns = ["config", "fold", "run_dir", *METRICS, "gap_attribute", "n_train", "n_val", "n_test", "status", *LIKE]
    runs = pd.DataFrame(rows, columns=columns)
    runs = require_same_test_data(runs, correctness, notes)
    notes += keep_apart(runs)
    notes += _left_out_of_figures(runs)
    return runs, correctness, notes


def _as_listed(run: pd.Series, correct: pd.Series) -> dict:
    """What a run without a ``tested_on`` record (an older maskdet) shows of its test data: the image paths
    and labels its predictions.csv lists, and the class names of its metrics.json."""
    listed = hashlib.sha256("\n".join(sorted(correct.index)).encode()).hexdigest()[:12]
    metrics = json.loads((Path(run["run_dir"]) / runfolder.METRICS).read_text())
    classes = one_line(", ".join(map(str, metrics.get("class_names") or ["unknown"])))
    return {"test_data": f"{len(correct)} images listed in predictions.csv (paths and labels {listed}), classes "
                         f"{classes}", "test_images": len(correct), "class_names": classes}


def require_same_test_data(runs: pd.DataFrame, correctness: dict, notes: list[str]) -> pd.DataFrame:
    """Refuse runs tested on different data (a pooled interval or a paired test of them would compare
    different test sets); leave out, with a note, runs without a record when others have one."""
    recorded = runs["test_data"].notna()
    if recorded.any() and not recorded.all():
        notes.append("left out (no record of what they were tested on: written by an older maskdet; re-test "
                     f"them with maskdet.evaluate to compare them): {_run_list(runs.loc[~recorded, 'run_dir'])}")
        runs = runs[recorded].reset_index(drop=True)
    elif len(runs) and not recorded.any():
        listed = pd.DataFrame([_as_listed(run, correctness[run["run_dir"]]) for _, run in runs.iterrows()])
        runs = runs.assign(**{column: listed[column].to_numpy() for column in listed})
        notes.append("no run records what it was tested on (written by an older maskdet): test data compared by "
                     "the image paths and labels of each predictions.csv only, not the images' contents")
    kinds = runs.groupby("test_data", sort=False)
    if len(kinds) > 1:
        how = "their class names differ" if runs["class_names"].nunique() > 1 else \
            "they hold different numbers of test images" if runs["test_images"].nunique() > 1 else \
            "the same number of test images and the same classes, but different images or labels"
        described = "; ".join(f"test data {data}: {_run_list(group['run_dir'])}" for data, group in kinds)
        raise DataError(f"These runs were not tested on the same data ({how}), so they cannot be pooled into one "
                        "configuration or compared: a paired test needs the same test images, and so does an "
                        f"interval over folds. {described}. Compare each group on its own (python -m "
                        "maskdet.compare <its run folders>), or test the runs on one dataset with maskdet.evaluate.")
    return runs


def _run_list(folders, shown: int = 6) -> str:
    folders = [one_line(f) for f in folders]
    return ", ".join(folders[:shown]) + (f" and {len(folders) - shown} more" if len(folders) > shown else "")


WHY_LEFT_OUT = {"ece": "its predictions.csv holds confidences that are not numbers in [0, 1]",
                "largest_gap": "no attribute had two groups of at least bias.min_group_size test images, or no "
                               "bias_report.json"}


def _left_out_of_figures(runs: pd.DataFrame) -> list[str]:
    """A note per figure naming the runs it leaves out (when some, not all, lack it: when all do, the
    figure's column is empty and says so)."""
    notes = []
    for metric, title in METRICS.items():
        missing = runs[runs[metric].isna()]
        if 0 < len(missing) < len(runs):
            notes.append(f"{title} leaves out {len(missing)} run(s) ({WHY_LEFT_OUT.get(metric, 'no figure')}): "
                         f"{_run_list(missing['run_dir'])}; its intervals hold the others (n in "
                         "comparison_configurations.csv and comparison.png)")
    return notes


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


def configuration_intervals(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: runs, and mean with 95 % t interval over folds of every metric; best accuracy first."""
    rows = []
    for config, group in runs.groupby("config", sort=False):
        row = {"config": config, "folds": len(group)}
        for metric in METRICS:
            row[f"{metric}_n"] = int(group[metric].notna().sum())
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = t_interval(group[metric])
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("accuracy", ascending=False, kind="stable").reset_index(drop=True) if rows else table


def corrected_t_test(differences, n_train: float, n_test: float, confidence: float = 0.95) -> dict:
    """Nadeau & Bengio (2003) corrected resampled t-test of the mean of per-fold differences.

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
    Newcombe's (1998, method 10) score interval of the paired accuracy difference.

    The interval is written here (no scipy/scikit-learn function; statsmodels is not a dependency) from
    each accuracy's Wilson interval and the correlation of the two models' hits, as the unpaired Newcombe
    interval of the bias audit is; unlike an interval given the discordant pairs, it does not stop at the
    observed difference when one model wins every discordant pair."""
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


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (nan stays nan). By hand because statsmodels, whose
    ``multipletests(method="holm")`` gives the same figures, is not a dependency for these few lines."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, (len(valid) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def _one_run_per_fold(group: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    repeated = group[group.duplicated("fold", keep=False)]
    for fold in repeated["fold"].unique():
        notes.append(f"{group['config'].iloc[0]}: {int((group['fold'] == fold).sum())} runs of fold {fold} "
                     f"({_run_list(repeated.loc[repeated['fold'] == fold, 'run_dir'])}); that fold is left out of "
                     "the paired tests (which run would pair is ambiguous), kept in the intervals")
    return group.drop_duplicates("fold", keep=False).set_index("fold")


def compare_pairs(runs: pd.DataFrame, correctness: dict[str, pd.Series], order: list[str],
                  notes: list[str]) -> list[dict]:
    """Every pair of configurations (better accuracy first): Nadeau-Bengio per metric over the folds both
    ran, McNemar per fold both tested on the same images; Holm within each test and metric."""
    by_config = {c: _one_run_per_fold(g, notes) for c, g in runs.groupby("config", sort=False)}
    metrics = list(METRICS)
    if runs["largest_gap"].isna().all():
        metrics.remove("largest_gap")
        notes.append("no run has a largest demographic gap (it needs two groups of at least bias.min_group_size "
                     "test images), so the gap column is empty and untested")
    pairs = []
    for a, b in itertools.combinations(order, 2):
        ra, rb = by_config[a], by_config[b]
        folds = [f for f in ra.index if f in rb.index]
        if not folds:
            notes.append(f"{a} vs {b}: no fold run by both, so no paired test")
            continue
        for metric in metrics:
            both = [f for f in folds if pd.notna(ra.at[f, metric]) and pd.notna(rb.at[f, metric])]
            base = {"a": a, "b": b, "metric": metric, "test": "nadeau_bengio", "fold": None, "n_folds": len(both),
                    "mean_a": ra.loc[both, metric].mean() if both else math.nan,
                    "mean_b": rb.loc[both, metric].mean() if both else math.nan}
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
            result = corrected_t_test(ra.loc[both, metric] - rb.loc[both, metric], n_train, n_test)
            if math.isnan(result["p_value"]):
                notes.append(f"{a} vs {b}, {metric}: the same non-zero difference on every fold, so the t "
                             "statistic is undefined (no p-value)")
            pairs.append({**base, **result, "n_test": n_test, "n_train": n_train})
        for fold in folds:
            ca, cb = correctness[ra.at[fold, "run_dir"]], correctness[rb.at[fold, "run_dir"]]
            if set(ca.index) != set(cb.index) or ca.index.has_duplicates:
                notes.append(f"{a} vs {b}, fold {fold}: the two runs were tested on different images "
                             "(paths or labels in predictions.csv differ, or a path is listed twice), so no McNemar test")
                continue
            cb = cb.loc[ca.index]
            pairs.append({"a": a, "b": b, "metric": "accuracy", "test": "mcnemar_exact", "fold": fold,
                          "mean_a": float(ca.mean()), "mean_b": float(cb.mean()),
                          **mcnemar_exact(ca.to_numpy(bool), cb.to_numpy(bool))})
    families = {}
    for i, pair in enumerate(pairs):
        families.setdefault((pair["test"], pair["metric"]), []).append(i)
    for members in families.values():
        for i, adjusted in zip(members, holm([pairs[i]["p_value"] for i in members])):
            pairs[i]["p_holm"] = adjusted
            pairs[i]["significant"] = bool(adjusted < ALPHA) if not math.isnan(adjusted) else None
    return [{column: pair.get(column) for column in PAIR_COLUMNS} for pair in pairs]


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _interval(mean, low, high) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]" if pd.notna(low) else f"{mean:.4f}"


def _p(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.3g}"


def format_markdown(configs: pd.DataFrame, pairs: list[dict], runs: pd.DataFrame, notes: list[str]) -> str:
    """The comparison as markdown; every name read from a file (configuration, folder, note) passes through
    ``writing.md``: one line, HTML and ``|`` escaped."""
    lines = ["# Comparison of configurations", "",
             "All figures are on the test split (every fold is tested on the same holdout images). Lower is "
             "better for ECE and the largest gap (the widest accuracy gap between demographic groups large "
             "enough to rank, over all attributes).", "",
             "## Configurations (mean [95 % t interval] over folds, best accuracy first)", "",
             "| configuration | runs | " + " | ".join(METRICS.values()) + " |", "|---" * (2 + len(METRICS)) + "|"]
    for _, row in configs.iterrows():
        cells = [_interval(row[m], row[f"{m}_low"], row[f"{m}_high"]) for m in METRICS]
        lines.append(f"| {md(row['config'])} | {row['folds']} | " + " | ".join(cells) + " |")
    folded = [p for p in pairs if p["test"] == "nadeau_bengio"]
    lines += ["", "## Pairs across folds (Nadeau-Bengio corrected resampled t-test, Holm within each metric)", "",
              "Difference = a - b over the folds both ran; the variance is inflated by 1/k + n_test/n_train "
              "because the folds' training sets overlap.", ""]
    if folded:
        lines += ["| a | b | metric | folds | difference [95 % CI] | p | p (Holm) | significant |", "|---" * 8 + "|"]
        for p in folded:
            verdict = "-" if p["significant"] is None else ("yes" if p["significant"] else "no")
            lines.append(f"| {md(p['a'])} | {md(p['b'])} | {METRICS[p['metric']]} | {p['n_folds']} | "
                         f"{_interval(p['difference'], p['ci_low'], p['ci_high'])} | {_p(p['p_value'])} | "
                         f"{_p(p['p_holm'])} | {verdict} |")
    else:
        lines.append("No pair of configurations with two or more folds in common.")
    paired = [p for p in pairs if p["test"] == "mcnemar_exact"]
    lines += ["", "## Pairs on the shared test split (McNemar's exact test per fold, Holm over pairs and folds)", ""]
    if paired:
        lines += ["| a | b | fold | images | only a right | only b right | accuracy difference [95 % CI] | p | "
                  "p (Holm) | significant |", "|---" * 10 + "|"]
        for p in paired:
            verdict = "yes" if p["significant"] else "no"
            lines.append(f"| {md(p['a'])} | {md(p['b'])} | {md(p['fold'])} | {p['n']} | {p['a_only_correct']} | "
                         f"{p['b_only_correct']} | {_interval(p['difference'], p['ci_low'], p['ci_high'])} | "
                         f"{_p(p['p_value'])} | {_p(p['p_holm'])} | {verdict} |")
    else:
        lines.append("No pair of runs tested on the same images.")
    lines += ["", "## Runs", "", "| configuration | fold | " + " | ".join(METRICS.values()) + " | n_train | n_test "
              "| run folder |", "|---" * (5 + len(METRICS)) + "|"]
    for _, r in runs.iterrows():
        lines.append(f"| {md(r['config'])} | {md(r['fold'])} | " + " | ".join(_fmt(r[m]) for m in METRICS) +
                     f" | {md(r['n_train'])} | {md(r['n_test'])} | {md(r['run_dir'])} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {md(note)}" for note in notes]
    return "\n".join(lines) + "\n"


def _label(name: str) -> str:
    """A configuration name as matplotlib text: ``$`` would start mathtext (and a malformed one fails)."""
    return one_line(name).replace("$", r"\$")


def plot(configs: pd.DataFrame, path: Path) -> None:
    """One panel per metric: each configuration's mean and 95 % interval over folds, and the number of runs
    behind it (a run without the figure is left out, and named in comparison.md)."""
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 1.2 + 0.45 * len(configs)),
                             sharey=True, squeeze=False)
    y = np.arange(len(configs))[::-1]
    for ax, (metric, title) in zip(axes[0], METRICS.items()):
        mean = configs[metric].to_numpy(float)
        low, high = configs[f"{metric}_low"].to_numpy(float), configs[f"{metric}_high"].to_numpy(float)
        err = np.nan_to_num(np.vstack([mean - low, high - mean]))
        ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3)
        for row, n in zip(y, configs[f"{metric}_n"]):
            ax.text(0.99, row, f"n={n}", transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=7)
        ax.set_title(f"{title}{' (lower is better)' if metric in LOWER_IS_BETTER else ''}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, [_label(c) for c in configs["config"]], fontsize=8)
    fig.suptitle("95 % t intervals over folds (test split); n: runs with the figure", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_comparison(paths, out_dir: str | Path) -> dict:
    """Compare the runs under ``paths`` and write comparison.md / .csv / .json, comparison_configurations.csv
    and comparison.png into ``out_dir`` (through ``maskdet.writing``: a planted symlink is replaced, never
    written through); return the configurations, pairs, runs, notes and the markdown."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{', '.join(missing)} does not exist: pass a sweep folder "
                        "(outputs/<task>/multiruns/<time>) or run folders (outputs/<task>/runs/<time>).")
    runs, correctness, notes = load_runs(paths)
    if runs.empty:
        raise DataError(
            f"No usable runs to compare in {', '.join(map(str, paths))}: a usable run folder holds "
            "metrics.json and predictions.csv (written when a training run tests its best checkpoint). "
            + (f"Found {len(notes)} run folder(s), none usable: {one_line('; '.join(notes))}. " if notes else
               "No run folder was found there (a run folder has .hydra/, metrics.json or failed.json). ")
            + "Pass a sweep folder (outputs/<task>/multiruns/<time>) or run folders (outputs/<task>/runs/<time>).")
    configs = configuration_intervals(runs)
    if len(configs) < 2:
        notes.append("only one configuration: intervals only, no pairs to compare")
    pairs = compare_pairs(runs, correctness, list(configs["config"]), notes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(configs, pairs, runs, notes)
    write_text(out_dir / "comparison.md", markdown)
    write_csv(pd.DataFrame(pairs, columns=PAIR_COLUMNS), out_dir / "comparison.csv")
    write_json(out_dir / "comparison.json", pairs)
    write_csv(configs, out_dir / "comparison_configurations.csv")
    plot(configs, out_dir / "comparison.png")
    return {"configurations": configs, "pairs": pairs, "runs": runs, "notes": notes, "markdown": markdown}

"""The bias audit: per-group metrics with confidence intervals, and tests of the largest gap.

Per attribute (gender, race, age group, gender x race) and group: n, accuracy (Wilson 95 % interval),
the figures of ``bias.metrics`` (macro-F1 and expected calibration error by default; any of
``metrics.GROUP_METRICS``) with bootstrap 95 % intervals, recall per class. Per attribute: the
largest accuracy gap between groups large enough to rank, its Newcombe interval and two-proportion z-test
p-value (Bonferroni-corrected for the number of group pairs it was picked from), and the worst-group
accuracy. Group metrics come from fairlearn's ``MetricFrame``; the
intervals and tests are the standard formulas (scipy), which fairlearn does not provide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference  # noqa: E402
from scipy.stats import binomtest, norm  # noqa: E402
from sklearn.metrics import accuracy_score, recall_score  # noqa: E402

from maskdet.data.demographics import GROUP_COLUMNS, UNKNOWN
from maskdet.evaluation.metrics import resolve_group_metrics
from maskdet.jsonfile import write_json
from maskdet.writing import md, save_figure, write_csv, write_text

DEFAULT_ATTRIBUTES = ("gender", "race", "age_group", "gender_x_race")
DEFAULT_METRICS = ("macro_f1", "ece")  # per-group figures with bootstrap intervals (metrics.GROUP_METRICS)


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


def _with_intervals(figures: dict, y_true, y_pred, confidence, n_boot, rng) -> dict[str, float]:
    """Each of ``figures`` (``metrics.resolve_group_metrics``) with its 95 % percentile bootstrap interval:
    the same function applied to ``n_boot`` resamples at once (one resampling shared by every figure)."""
    idx = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    row = {}
    for name, (_, function) in figures.items():
        low, high = np.percentile(function(y_true[idx], y_pred[idx], confidence[idx]), [2.5, 97.5])
        row.update({name: float(function(y_true, y_pred, confidence)[0]), f"{name}_low": low, f"{name}_high": high})
    return row


def with_group_columns(predictions: pd.DataFrame) -> pd.DataFrame:
    frame = predictions.copy()
    for column in GROUP_COLUMNS:
        frame[column] = frame[column].fillna(UNKNOWN).astype(str) if column in frame else UNKNOWN
    frame["gender_x_race"] = np.where((frame["gender"] == UNKNOWN) | (frame["race"] == UNKNOWN), UNKNOWN,
                                      frame["gender"] + "/" + frame["race"])
    return frame


def audit(predictions: pd.DataFrame, class_names: Sequence[str], attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
          min_group_size: int = 30, n_bootstrap: int = 1000, seed: int = 0,
          metrics: Sequence[str] = DEFAULT_METRICS) -> dict:
    """The bias audit of ``predictions`` (``predictions.csv``): a dict with ``groups`` (one row per
    attribute x group: accuracy with its Wilson interval, each of ``metrics`` with a bootstrap interval,
    recall per class), ``gaps`` (one per attribute) and notes for attributes with no information."""
    figures = resolve_group_metrics(metrics)
    names = list(class_names)
    frame = with_group_columns(predictions)
    y_true = frame["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    y_pred = frame["prediction"].map({n: i for i, n in enumerate(names)}).to_numpy()
    confidence = frame["confidence"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    rows, gaps, notes = [], [], []
    for attribute in attributes:
        groups = frame[attribute]
        if (groups == UNKNOWN).all():
            notes.append(f"{attribute}: no demographic information (file names are not UTKFace-style and no "
                         f"{attribute} column was given), so no per-group figures.")
            continue
        frame_by_group = MetricFrame(
            metrics={"accuracy": accuracy_score,
                     **{f"recall_{n}": (lambda t, p, c=i: recall_score(t, p, labels=[c], average="macro", zero_division=0))
                        for i, n in enumerate(names)}},
            y_true=y_true, y_pred=y_pred, sensitive_features=groups.to_numpy())
        table = frame_by_group.by_group
        for group, values in table.iterrows():
            mask = (groups == group).to_numpy()
            n, correct = int(mask.sum()), int((y_true[mask] == y_pred[mask]).sum())
            low, high = wilson_interval(correct, n)
            present = [i for i in range(len(names)) if (y_true[mask] == i).any()]
            rows.append({
                "attribute": attribute, "group": str(group), "n": n, "correct": correct,
                "accuracy": float(values["accuracy"]), "accuracy_low": low, "accuracy_high": high,
                **_with_intervals(figures, y_true[mask], y_pred[mask], confidence[mask], n_bootstrap, rng),
                **{f"recall_{names[i]}": float(values[f"recall_{names[i]}"]) if i in present else math.nan
                   for i in range(len(names))},
                "ranked": n >= min_group_size and group != UNKNOWN,
            })
        ranked = [r for r in rows if r["attribute"] == attribute and r["ranked"]]
        gap = {"attribute": attribute, "groups_ranked": len(ranked),
               "groups_flagged": sum(1 for r in rows if r["attribute"] == attribute and not r["ranked"])}
        if len(ranked) >= 2:
            best = max(ranked, key=lambda r: r["accuracy"])
            worst = min(ranked, key=lambda r: r["accuracy"])
            # The largest of k(k-1)/2 possible gaps is tested, so the test and the interval are
            # Bonferroni-corrected for that many comparisons (no correction with two groups).
            comparisons = len(ranked) * (len(ranked) - 1) // 2
            z, p = two_proportion_test(best["correct"], best["n"], worst["correct"], worst["n"])
            low, high = newcombe_interval(best["correct"], best["n"], worst["correct"], worst["n"],
                                          confidence=1 - 0.05 / comparisons)
            gap.update(best_group=best["group"], best_accuracy=best["accuracy"], worst_group=worst["group"],
                       worst_accuracy=worst["accuracy"], gap=best["accuracy"] - worst["accuracy"],
                       gap_low=low, gap_high=high, z=z, p_value_raw=p, comparisons=comparisons,
                       p_value=min(1.0, p * comparisons), significant=bool(low > 0 or high < 0))
        known = groups != UNKNOWN
        if len(names) == 2 and known.sum() and groups[known].nunique() >= 2:
            gap["demographic_parity_difference"] = float(demographic_parity_difference(
                y_true[known.to_numpy()], y_pred[known.to_numpy()], sensitive_features=groups[known].to_numpy()))
            gap["equalized_odds_difference"] = float(equalized_odds_difference(
                y_true[known.to_numpy()], y_pred[known.to_numpy()], sensitive_features=groups[known].to_numpy()))
        gaps.append(gap)
    return {"groups": rows, "gaps": gaps, "notes": notes, "min_group_size": min_group_size,
            "n_bootstrap": n_bootstrap, "class_names": names, "metrics": list(figures),
            "metric_titles": {name: title for name, (title, _) in figures.items()}}


def format_markdown(report: dict) -> str:
    metrics = report["metrics"]
    titles = [report["metric_titles"][m] for m in metrics]
    lines = ["# Bias report", "",
             f"Accuracy with Wilson 95 % intervals; {' and '.join(titles) or 'no other figure'} with bootstrap 95 % intervals "
             f"({report['n_bootstrap']} resamples). Groups under {report['min_group_size']} images, and "
             f"'unknown', are shown but not ranked (marked *).", ""]
    lines += [f"- {md(note)}" for note in report["notes"]]
    for gap in report["gaps"]:
        attribute = gap["attribute"]
        lines += ["", f"## {md(attribute)}", "", f"| group | n | accuracy | {' | '.join(titles)} |",
                  "|---|---|---|" + "---|" * len(titles)]
        for r in (r for r in report["groups"] if r["attribute"] == attribute):
            mark = "" if r["ranked"] else " *"
            cells = [f"{r[k]:.4f} [{r[k + '_low']:.4f}, {r[k + '_high']:.4f}]" for k in ("accuracy", *metrics)]
            lines.append(f"| {md(r['group'])}{mark} | {r['n']} | {' | '.join(cells)} |")
        if "gap" in gap:
            verdict = "significant" if gap["significant"] else "not significant"
            corrected = f", Bonferroni-corrected for {gap['comparisons']} pairs" if gap["comparisons"] > 1 else ""
            lines += ["", f"Largest gap: {md(gap['best_group'])} {gap['best_accuracy']:.4f} vs {md(gap['worst_group'])} "
                          f"{gap['worst_accuracy']:.4f}: {gap['gap']:+.4f} [{gap['gap_low']:+.4f}, {gap['gap_high']:+.4f}], "
                          f"z = {gap['z']:.2f}, p = {gap['p_value']:.3g}{corrected} ({verdict} at 5 %). "
                          f"Worst-group accuracy: {gap['worst_accuracy']:.4f}."]
        else:
            lines += ["", "Fewer than two groups large enough to rank: no gap test."]
        for key in ("demographic_parity_difference", "equalized_odds_difference"):
            if key in gap:
                lines.append(f"{key.replace('_', ' ')}: {gap[key]:.4f}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> plt.Figure:
    """``bias.png``, sized for a paper's text width (6.5 in, text of 8 pt or more): one panel per attribute,
    each group's accuracy with its Wilson interval, every panel on the same accuracy axis and with the
    overall accuracy as a dashed reference line. Returns the figure (closed) for inspection."""
    attributes = [g["attribute"] for g in report["gaps"]]
    if not attributes:
        fig, ax = plt.subplots(figsize=(6.5, 1.0))
        ax.text(0.5, 0.5, "no demographic information", ha="center", va="center", fontsize=10)
        ax.axis("off")
        save_figure(fig, path, dpi=200)
        plt.close(fig)
        return fig
    panels = [[r for r in report["groups"] if r["attribute"] == a] for a in attributes]
    # Each attribute splits the same test images ('unknown' is a group too), so any one panel sums to the whole.
    overall = sum(r["correct"] for r in panels[0]) / sum(r["n"] for r in panels[0])
    lowest = min(r["accuracy_low"] for rows in panels for r in rows)
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False, layout="constrained",
                             figsize=(6.5, 0.8 + sum(0.45 + 0.2 * len(rows) for rows in panels)),
                             gridspec_kw={"height_ratios": [len(rows) + 1.5 for rows in panels]})
    handles = {}
    for ax, attribute, rows in zip(axes[:, 0], attributes, panels):
        for y, r in enumerate(rows):
            key = "ranked" if r["ranked"] else "not ranked"
            handles[key] = ax.errorbar(r["accuracy"], y, xerr=[[r["accuracy"] - r["accuracy_low"]],
                                                                [r["accuracy_high"] - r["accuracy"]]],
                                       fmt="o", markersize=4, capsize=2,
                                       color="tab:blue" if r["ranked"] else "tab:gray")
        handles["overall"] = ax.axvline(overall, color="black", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(rows)), [f"{r['group']} (n={r['n']})" for r in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first group on top
        ax.set_title(attribute.replace("_x_", " × ").replace("_", " "), loc="left", fontsize=9, fontweight="bold")
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    axes[0, 0].set_xlim(max(0.0, math.floor(lowest * 20) / 20 - 0.05), 1.01)  # shared: all panels follow
    axes[-1, 0].set_xlabel("accuracy on the test split, with 95 % Wilson interval", fontsize=9)
    labels = {"ranked": f"group of ≥ {report['min_group_size']} images (ranked in the gap test)",
              "not ranked": f"group not ranked (< {report['min_group_size']} images, or unknown)",
              "overall": f"overall accuracy ({overall:.3f})"}
    fig.legend([handles[k] for k in labels if k in handles], [labels[k] for k in labels if k in handles],
               loc="outside upper center", ncol=2, fontsize=8, frameon=False)
    save_figure(fig, path, dpi=200)
    plt.close(fig)
    return fig


def write_bias_report(predictions: pd.DataFrame, class_names: Sequence[str], folder: str | Path, **options) -> dict:
    """Audit ``predictions`` and write bias_report.md / .csv / .json and bias.png into ``folder``."""
    folder = Path(folder)
    report = audit(predictions, class_names, **options)
    write_json(folder / "bias_report.json", report)
    write_csv(pd.DataFrame(report["groups"]), folder / "bias_report.csv")
    write_text(folder / "bias_report.md", format_markdown(report))
    plot(report, folder / "bias.png")
    return report

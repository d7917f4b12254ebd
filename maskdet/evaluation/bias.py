"""The bias audit: per-group metrics with confidence intervals, calibration per group, one declared family
of gap tests, and the power of the audit.

Per attribute (gender, race, age group, gender x race) and group: n, accuracy (Wilson 95 % interval), the
figures of ``bias.metrics`` (macro-F1 by default; any of ``metrics.GROUP_METRICS``) with percentile
bootstrap 95 % intervals, recall per class, and the group's calibration (below). Group metrics come from
fairlearn's ``MetricFrame``; the intervals and tests are the standard formulas (scipy), which fairlearn does
not provide.

**Calibration per group.** Binned ECE (15 equal-width bins) is biased upwards at the sizes of demographic
groups (+0.14 at n = 30 for a true ECE of 0.05) and its percentile bootstrap inherits the bias, so its
intervals cover almost never; it stays available (``bias.metrics=[macro_f1,ece]``) but is no longer the
audit's calibration figure. Instead every group gets

- the *calibration gap*, mean confidence minus accuracy (calibration-in-the-large: the signed top-label ECE
  with one bin; > 0 overconfident). Its estimator is unbiased at every n, and its interval is the mean
  confidence minus the accuracy's Wilson interval: given the group's confidences the number correct is a
  sum of independent Bernoulli draws, whose variance is at most the binomial one the Wilson interval
  assumes, so the interval is slightly conservative. Simulated (``tests/test_statistics.py``), it covers
  the true gap 95-97 % of the time at n = 30, 90 and 180;
- Spiegelhalter's z-test of calibration (H0: P(correct | confidence) = confidence for every image), which
  also sees miscalibration of both signs that cancels in the mean (overconfident when sure,
  underconfident when unsure). Its p-values form the report's second, secondary family of tests
  (corrected together across attributes and groups with ``bias.correction``).

Neither needs bins. The gap can only equal the ECE when the model errs on one side everywhere; a gap
interval around 0 with a small Spiegelhalter p says the errors cancel.

**One family of gap tests.** The primary metric (``bias.primary_metric``: accuracy, or recall_<class>;
both proportions) is compared between every pair of ranked groups of every attribute with the pooled
two-proportion z-test, and all these tests of one report are one declared family, corrected together with
Holm's method (family-wise error) or, with ``bias.correction=fdr_bh``, Benjamini-Hochberg (false discovery
rate) at ``bias.alpha``. Each attribute's *largest gap* is that family's test of its best and worst group.
A gap's Newcombe interval is at the simultaneous (Bonferroni) level 1 - alpha/m for the m tests of the
family: all of them cover together with 95 % probability. The verdict is the corrected p-value, so an
interval can touch 0 where Holm, which is step-down and so more powerful than Bonferroni, still calls a gap
significant; the report says so.

**Power.** Beside every gap, the minimum detectable gap: the smallest drop d of one group below the
attribute's pooled value of the primary metric that the same z-test, at the pair's sizes, detects with
80 % power at the Bonferroni level alpha/m (the level Holm's first step, or a lone Benjamini-Hochberg
discovery, must pass), from the normal approximation to the test's power (Fleiss; statsmodels'
``power_proportions_2indep``). A ranked group whose detectable gap against the attribute's largest other
group exceeds ``TOO_SMALL_GAP`` (0.2 in accuracy: larger than any gap a real audit hopes to rule out), or that
no gap could reach 80 % power, gets a warning: the audit can say almost nothing about it. So does every group
under ``bias.min_group_size``, which is not tested at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference  # noqa: E402
from sklearn.metrics import accuracy_score, recall_score  # noqa: E402

from maskdet.data.demographics import GROUP_COLUMNS, UNKNOWN
from maskdet.errors import ConfigError
from maskdet.evaluation.metrics import resolve_group_metrics
from maskdet.evaluation.options import BIAS, CORRECTIONS, BiasOptions
from maskdet.evaluation.statistics import (
    POWER,
    adjust_p_values,
    calibration_gap,
    min_detectable_gap,
    newcombe_interval,
    spiegelhalter_test,
    two_proportion_test,
    wilson_interval,
)
from maskdet.jsonfile import write_json
from maskdet.writing import md, percent, plot_text, save_figure, write_csv, write_text

TOO_SMALL_GAP = 0.2  # a ranked group that could only be found to differ by more than this is warned about
# Per-group figures (bias.metrics, default [macro_f1]): binned ECE ("ece") is not among the defaults: its
# bootstrap interval does not cover the true ECE at group sizes (module docstring); the calibration gap and
# Spiegelhalter's test below replace it, and bias.metrics=[macro_f1,ece] still gives the old columns.


def _primary_counts(metric: str, names: list[str], y_true, y_pred) -> tuple[int, int]:
    """(successes, trials) of the primary metric in one group: accuracy, or recall of one class."""
    if metric == "accuracy":
        return int((y_true == y_pred).sum()), len(y_true)
    c = names.index(metric.removeprefix("recall_"))
    return int(((y_true == c) & (y_pred == c)).sum()), int((y_true == c).sum())


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


def audit(predictions: pd.DataFrame, class_names: Sequence[str], attributes: Sequence[str] = BIAS.attributes,
          min_group_size: int = BIAS.min_group_size, n_bootstrap: int = BIAS.n_bootstrap, seed: int = BIAS.seed,
          metrics: Sequence[str] = BIAS.metrics, primary_metric: str = BIAS.primary_metric,
          correction: Literal["holm", "fdr_bh"] = BIAS.correction, alpha: float = BIAS.alpha) -> dict:
    """The bias audit of ``predictions`` (``predictions.csv``): a dict with ``groups`` (one row per
    attribute x group: accuracy with its Wilson interval, each of ``metrics`` with a bootstrap interval,
    recall per class, the calibration gap and Spiegelhalter's test), ``gaps`` (one per attribute: the
    largest gap of ``primary_metric``, its test within the report's one family, and the minimum detectable
    gap), ``family`` (every gap test, corrected together with ``correction``), ``warnings`` (groups too
    small to say anything about) and notes for attributes with no information."""
    names = list(class_names)
    valid = ["accuracy", *(f"recall_{n}" for n in names)]
    if primary_metric not in valid:
        raise ConfigError(f"bias.primary_metric={primary_metric!r}: the gap test compares proportions; use one of "
                          f"{', '.join(valid)}.")
    BiasOptions(attributes, min_group_size, metrics, n_bootstrap, seed, primary_metric, correction, alpha)  # checked
    figures = resolve_group_metrics(metrics)
    frame = with_group_columns(predictions)
    y_true = frame["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    y_pred = frame["prediction"].map({n: i for i, n in enumerate(names)}).to_numpy()
    confidence = frame["confidence"].to_numpy(dtype=float)
    calibrated = bool(len(confidence) and np.isfinite(confidence).all() and ((confidence >= 0) & (confidence <= 1)).all())
    rng = np.random.default_rng(seed)
    rows, gaps, notes, warnings, tests = [], [], [], [], []
    if not calibrated and len(confidence):
        notes.append("confidence is not a number in [0, 1] for every image: no calibration figures.")
    for attribute in attributes:
        groups = frame[attribute]
        if (groups == UNKNOWN).all():
            notes.append(f"{attribute}: no demographic information (file names are not UTKFace-style and no "
                         f"{attribute} column was given), so no per-group metrics.")
            continue
        frame_by_group = MetricFrame(
            metrics={"accuracy": accuracy_score,
                     **{f"recall_{n}": (lambda t, p, c=i: recall_score(t, p, labels=[c], average="macro", zero_division=0))
                        for i, n in enumerate(names)}},
            y_true=y_true, y_pred=y_pred, sensitive_features=groups.to_numpy())
        table = frame_by_group.by_group
        first = len(rows)
        for group, values in table.iterrows():
            mask = (groups == group).to_numpy()
            n, correct = int(mask.sum()), int((y_true[mask] == y_pred[mask]).sum())
            low, high = wilson_interval(correct, n)
            present = [i for i in range(len(names)) if (y_true[mask] == i).any()]
            ranked = n >= min_group_size and group != UNKNOWN
            hits = y_true[mask] == y_pred[mask]
            gap, gap_low, gap_high = calibration_gap(confidence[mask], hits) if calibrated else (math.nan,) * 3
            z, p = spiegelhalter_test(confidence[mask], hits) if calibrated and ranked else (math.nan, math.nan)
            rows.append({
                "attribute": attribute, "group": str(group), "n": n, "correct": correct,
                "accuracy": float(values["accuracy"]), "accuracy_low": low, "accuracy_high": high,
                **_with_intervals(figures, y_true[mask], y_pred[mask], confidence[mask], n_bootstrap, rng),
                **{f"recall_{names[i]}": float(values[f"recall_{names[i]}"]) if i in present else math.nan
                   for i in range(len(names))},
                "ranked": ranked,
                "mean_confidence": float(confidence[mask].mean()) if calibrated else math.nan,
                "calibration_gap": gap, "calibration_gap_low": gap_low, "calibration_gap_high": gap_high,
                "calibration_z": z, "calibration_p_raw": p,
            })
        mine = rows[first:]
        # the primary metric's (successes, trials) per ranked group; a group without trials (no image of the
        # class whose recall is primary) has no value and is left out of the tests
        counted = []
        for r in mine:
            if r["ranked"]:
                mask = (groups == r["group"]).to_numpy()
                k, m = _primary_counts(primary_metric, names, y_true[mask], y_pred[mask])
                if m:
                    value = r["accuracy"] if primary_metric == "accuracy" else k / m  # fairlearn's, as before
                    counted.append({"row": r, "k": k, "n": m, "value": value})
        for r in mine:
            if not r["ranked"] and r["group"] != UNKNOWN and r["n"]:
                warnings.append(f"{attribute}: {r['group']} (n = {r['n']}) is under bias.min_group_size = "
                                f"{min_group_size}: shown, not tested; its metrics say almost nothing.")
        gap = {"attribute": attribute, "metric": primary_metric, "groups_ranked": sum(r["ranked"] for r in mine),
               "groups_flagged": sum(1 for r in mine if not r["ranked"])}
        if len(counted) >= 2:
            baseline = sum(c["k"] for c in counted) / sum(c["n"] for c in counted)
            for i, a in enumerate(counted):
                for b in counted[i + 1:]:
                    high, low = (a, b) if a["value"] >= b["value"] else (b, a)
                    z, p = two_proportion_test(high["k"], high["n"], low["k"], low["n"])
                    tests.append({"attribute": attribute, "group_a": high["row"]["group"], "group_b": low["row"]["group"],
                                  "k_a": high["k"], "n_a": high["n"], "k_b": low["k"], "n_b": low["n"],
                                  "gap": high["value"] - low["value"], "z": z, "p_value_raw": p, "baseline": baseline})
            best = max(counted, key=lambda c: c["value"])
            worst = min(counted, key=lambda c: c["value"])
            if best is worst:  # every group alike: any two
                worst = counted[1] if best is counted[0] else counted[0]
            z, p = two_proportion_test(best["k"], best["n"], worst["k"], worst["n"])
            gap.update(best_group=best["row"]["group"], best_accuracy=best["row"]["accuracy"],
                       worst_group=worst["row"]["group"], worst_accuracy=worst["row"]["accuracy"],
                       best_value=best["value"], worst_value=worst["value"], gap=best["value"] - worst["value"],
                       best_n=best["n"], worst_n=worst["n"],
                       z=z, p_value_raw=p, comparisons=len(counted) * (len(counted) - 1) // 2, baseline=baseline,
                       _pair=(best, worst))
            largest = max(counted, key=lambda c: c["n"])
            gap["_sizes"] = [(c, largest if c is not largest else max((o for o in counted if o is not c),
                                                                      key=lambda o: o["n"])) for c in counted]
        known = groups != UNKNOWN
        if len(names) == 2 and known.sum() and groups[known].nunique() >= 2:
            gap["demographic_parity_difference"] = float(demographic_parity_difference(
                y_true[known.to_numpy()], y_pred[known.to_numpy()], sensitive_features=groups[known].to_numpy()))
            gap["equalized_odds_difference"] = float(equalized_odds_difference(
                y_true[known.to_numpy()], y_pred[known.to_numpy()], sensitive_features=groups[known].to_numpy()))
        gaps.append(gap)

    # One family: every gap test of the report, corrected together; intervals simultaneous (Bonferroni).
    m = len(tests)
    level = 1 - alpha / m if m else 1 - alpha
    for test, adjusted in zip(tests, adjust_p_values([t["p_value_raw"] for t in tests], correction)):
        low, high = newcombe_interval(test["k_a"], test["n_a"], test["k_b"], test["n_b"], confidence=level)
        test.update(p_value=float(adjusted), significant=bool(adjusted < alpha), gap_low=low, gap_high=high,
                    min_detectable_gap=min_detectable_gap(test["baseline"], test["n_a"], test["n_b"], alpha / max(m, 1)))
    by_pair = {(t["attribute"], t["group_a"], t["group_b"]): t for t in tests}
    for gap in gaps:
        if "_pair" not in gap:
            continue
        best, worst = gap.pop("_pair")
        test = by_pair.get((gap["attribute"], best["row"]["group"], worst["row"]["group"])) \
            or by_pair[(gap["attribute"], worst["row"]["group"], best["row"]["group"])]  # equal values
        low, high = newcombe_interval(best["k"], best["n"], worst["k"], worst["n"], confidence=level)
        gap.update(gap_low=low, gap_high=high, p_value=test["p_value"], significant=test["significant"],
                   family_size=m, interval_level=level, power_alpha=alpha / m, power=POWER,
                   min_detectable_gap=min_detectable_gap(gap["baseline"], best["n"], worst["n"], alpha / m))
        for group, other in gap.pop("_sizes"):
            detectable = min_detectable_gap(gap["baseline"], other["n"], group["n"], alpha / m)
            if not detectable <= TOO_SMALL_GAP:
                says = (f"only a gap above {detectable:.2f}" if math.isfinite(detectable)
                        else f"no gap at all (not even {primary_metric} 0 against {gap['baseline']:.2f})")
                warnings.append(f"{gap['attribute']}: {group['row']['group']} (n = {group['n']}) is too small to say "
                                f"much: against {other['row']['group']} (n = {other['n']}) the audit could detect "
                                f"{says} with {percent(POWER)} power at alpha {alpha / m:.2g}.")

    # A second, secondary family: Spiegelhalter's test of every ranked group.
    calibration_rows = [r for r in rows if math.isfinite(r["calibration_p_raw"])]
    for r in rows:
        r["calibration_p"] = math.nan
    for r, adjusted in zip(calibration_rows, adjust_p_values([r["calibration_p_raw"] for r in calibration_rows],
                                                              correction)):
        r["calibration_p"] = float(adjusted)
    return {"groups": rows, "gaps": gaps, "notes": notes, "warnings": warnings, "min_group_size": min_group_size,
            "n_bootstrap": n_bootstrap, "seed": seed, "class_names": names, "metrics": list(figures),
            "metric_titles": {name: title for name, (title, _) in figures.items()},
            "primary_metric": primary_metric, "alpha": alpha, "correction": correction,
            "family": {"metric": primary_metric, "test": "pooled two-proportion z-test, two-sided",
                       "method": correction, "method_name": CORRECTIONS[correction], "alpha": alpha, "size": m,
                       "interval": "Newcombe (hybrid score)", "interval_level": level,
                       "interval_simultaneous": "Bonferroni over the family", "power": POWER,
                       "power_alpha": alpha / m if m else math.nan, "tests": tests},
            "calibration_family": {"test": "Spiegelhalter z-test, two-sided", "method": correction,
                                   "size": len(calibration_rows), "role": "secondary (not in the gap family)"}}


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}"


def _detectable(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "none (no gap reaches the power)"


def format_markdown(report: dict) -> str:
    metrics = report["metrics"]
    titles = [report["metric_titles"][m] for m in metrics]
    family = report.get("family", {})
    m, method = family.get("size", 0), family.get("method_name", "")
    alpha = report.get("alpha", BIAS.alpha)
    metric = report.get("primary_metric", "accuracy")
    ece = (" ECE: top-label, 15 equal-width confidence bins; biased upwards at group sizes, and its bootstrap "
           "interval is not a confidence interval of the true ECE (use the calibration table)." if "ece" in metrics else "")
    lines = ["# Bias report", "",
             "**Conventions.** n: test images in the group. Accuracy: Wilson 95 % interval. "
             + (f"{', '.join(titles)}: percentile bootstrap 95 % intervals ({report['n_bootstrap']} resamples of the "
                f"group's images, seed {report.get('seed', 0)})." if titles else "")
             + f"{ece} Every figure is one test of one model: no mean over runs, no std. Groups under "
             f"{report['min_group_size']} images, and 'unknown', are shown but not ranked or tested (marked *). "
             "All intervals are pointwise 95 % except the gaps' (below).", "",
             f"**Tests: one family.** The gaps in {metric} between every pair of ranked groups of every attribute "
             f"(pooled two-proportion z-test, two-sided) are one family of {m} tests, corrected together with "
             f"{method} at {percent(alpha)}; {metric} is the primary metric and these are the report's confirmatory tests. "
             f"Gap intervals: Newcombe, simultaneous at {percent(family.get('interval_level', 1 - alpha))} (Bonferroni "
             f"over the {m} tests)"
             + ("; Holm's step-down may call a gap significant whose interval still touches 0." if report.get(
                 "correction", "holm") == "holm" else "; they are stricter than the false-discovery verdict, "
                 "which may call a gap significant whose interval touches 0.")
             + f" Power: the minimum detectable gap is the smallest drop below the attribute's pooled {metric} "
             f"that this test finds with {percent(POWER)} power at alpha/{max(m, 1)} = {alpha / max(m, 1):.2g}, at the "
             "pair's sizes.", "",
             "**Calibration** (no bins): calibration gap = mean confidence - accuracy (> 0 overconfident), "
             "interval = mean confidence minus the Wilson 95 % interval of accuracy (pointwise, about 95-97 % "
             "coverage at n >= 30 in simulation). Spiegelhalter's z-test of calibration per ranked group: a second, "
             f"secondary family of {report.get('calibration_family', {}).get('size', 0)} tests corrected together "
             f"with {method}.", ""]
    lines += [f"- {md(note)}" for note in report["notes"]]
    lines += [f"- warning: {md(w)}" for w in report.get("warnings", [])]
    for gap in report["gaps"]:
        attribute = gap["attribute"]
        rows = [r for r in report["groups"] if r["attribute"] == attribute]
        lines += ["", f"## {md(attribute)}", "",
                  "| group | n | accuracy [95 % Wilson] | "
                  + "".join(f"{t} [95 % bootstrap] | " for t in titles).rstrip(), "|---|---|---|" + "---|" * len(titles)]
        for r in rows:
            mark = "" if r["ranked"] else " *"
            cells = [f"{r[k]:.4f} [{r[k + '_low']:.4f}, {r[k + '_high']:.4f}]" for k in ("accuracy", *metrics)]
            lines.append(f"| {md(r['group'])}{mark} | {r['n']} | {' | '.join(cells)} |")
        if any(math.isfinite(r.get("calibration_gap", math.nan)) for r in rows):
            lines += ["", f"| group | n | mean confidence | calibration gap [95 %] | Spiegelhalter z | p | "
                          f"p ({report.get('correction', 'holm')}) |", "|---|---|---|---|---|---|---|"]
            for r in rows:
                mark = "" if r["ranked"] else " *"
                lines.append(f"| {md(r['group'])}{mark} | {r['n']} | {r['mean_confidence']:.4f} | "
                             f"{r['calibration_gap']:+.4f} [{r['calibration_gap_low']:+.4f}, "
                             f"{r['calibration_gap_high']:+.4f}] | "
                             + ("-" if not math.isfinite(r["calibration_z"]) else f"{r['calibration_z']:.2f}")
                             + f" | {_p(r['calibration_p_raw'])} | {_p(r['calibration_p'])} |")
        if "gap" in gap:
            verdict = (f"significant at {percent(alpha)}" if gap["significant"] else
                       f"not significant; this audit could only detect gaps above "
                       f"{_detectable(gap['min_detectable_gap'])}")
            lines += ["", f"Largest gap in {md(gap.get('metric', 'accuracy'))}: {md(gap['best_group'])} "
                          f"{gap['best_value']:.4f} (n = {gap['best_n']}) "
                          f"vs {md(gap['worst_group'])} {gap['worst_value']:.4f} (n = {gap['worst_n']}): "
                          f"{gap['gap']:+.4f} [{gap['gap_low']:+.4f}, {gap['gap_high']:+.4f}] "
                          f"({percent(gap['interval_level'])} simultaneous), z = {gap['z']:.2f}, p = {gap['p_value']:.3g} "
                          f"({method.split(' (')[0]} over the family of {gap['family_size']}; raw {gap['p_value_raw']:.3g}): "
                          f"{verdict}. Minimum detectable gap at these sizes: "
                          f"{_detectable(gap['min_detectable_gap'])} ({percent(POWER)} power, alpha {gap['power_alpha']:.2g}). "
                          f"Worst-group accuracy: {gap['worst_accuracy']:.4f}."]
        else:
            lines += ["", "Fewer than two groups large enough to rank: no gap test."]
        for key in ("demographic_parity_difference", "equalized_odds_difference"):
            if key in gap:
                lines.append(f"{key.replace('_', ' ')}: {gap[key]:.4f}")
    tests = family.get("tests", [])
    if tests:
        lines += ["", f"## All gap tests (the family: {m} tests of {metric}, {method})", "",
                  f"| attribute | higher | lower | gap [{percent(family['interval_level'])} simultaneous] | z | p | "
                  f"p ({report['correction']}) | significant | min. detectable gap |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in tests:
            lines.append(f"| {md(t['attribute'])} | {md(t['group_a'])} ({t['n_a']}) | {md(t['group_b'])} ({t['n_b']}) | "
                         f"{t['gap']:+.4f} [{t['gap_low']:+.4f}, {t['gap_high']:+.4f}] | {t['z']:.2f} | "
                         f"{t['p_value_raw']:.3g} | {t['p_value']:.3g} | {'yes' if t['significant'] else 'no'} | "
                         f"{_detectable(t['min_detectable_gap'])} |")
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
        ax.set_yticks(range(len(rows)), [f"{plot_text(r['group'])} (n={r['n']})" for r in rows], fontsize=8)
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

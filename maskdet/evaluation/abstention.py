"""Abstention (selective classification): answer only when the top-class confidence reaches a threshold,
"uncertain" below it.

- ``risk_coverage``: the risk-coverage curve (El-Yaniv & Wiener 2010; Geifman & El-Yaniv 2017): accepting
  the k most confident images, coverage k/n and risk (error rate among the accepted), for every k.
- ``threshold_for_target_error``: the threshold chosen on the validation split for a target error rate,
  the lowest confidence threshold whose accepted validation images err at most ``target_error`` (largest
  coverage meeting the target). It is a plug-in choice, not a guarantee: the report gives the error it
  achieves on the test split, with its Wilson interval.
- ``abstention_report``: test error and coverage at a threshold, overall and per demographic group, and
  the concentration test: each ranked group's abstention rate against the rest of the test split (pooled
  two-proportion z-test, one-sided: abstained on more), Holm-corrected over every group of every attribute
  as one family. A group whose corrected p-value is below alpha gets a warning line, since abstaining
  mostly on one group moves the errors into unanswered questions for that group: a bias finding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from maskdet.data.demographics import UNKNOWN
from maskdet.errors import ConfigError
from maskdet.evaluation.options import BIAS

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

# The report's statistics and figure (scipy, matplotlib, the bias audit's helpers) are imported by the functions
# that write it: predict's abstain.* uses this module's threshold functions only, and starts in seconds.
from maskdet.jsonfile import write_json
from maskdet.writing import md, save_figure, write_csv, write_text

log = logging.getLogger("maskdet.predict")
UNCERTAIN = "uncertain"  # predict's answer below the threshold (in the prediction column)


def risk_coverage(confidence, correct) -> pd.DataFrame:
    """One row per distinct confidence, highest first: accepting every image at or above ``threshold``
    gives ``coverage`` (share accepted), ``accepted`` and ``risk`` (error rate among them)."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    order = np.argsort(-confidence, kind="stable")
    conf, errors = confidence[order], np.cumsum(~correct[order])
    last = np.r_[conf[1:] != conf[:-1], True] if len(conf) else np.zeros(0, bool)  # ties accepted together
    accepted = np.arange(1, len(conf) + 1)[last]
    return pd.DataFrame({"threshold": conf[last], "accepted": accepted, "coverage": accepted / max(len(conf), 1),
                         "risk": errors[last] / accepted})


def area_under_risk_coverage(curve: pd.DataFrame) -> float:
    """AURC: the mean risk over coverages (a step function of the accepted count; lower is better)."""
    if curve.empty:
        return math.nan
    counts = np.diff(np.r_[0, curve["accepted"].to_numpy()])
    return float((curve["risk"].to_numpy() * counts).sum() / counts.sum())


def threshold_for_target_error(confidence, correct, target_error: float) -> float | None:
    """The lowest threshold at which the accepted images err at most ``target_error``; None when no
    threshold reaches it (even the most confident image is wrong too often)."""
    curve = risk_coverage(confidence, correct)
    meets = curve[curve["risk"] <= target_error]
    return None if meets.empty else float(meets["threshold"].iloc[-1])


def check_abstain_options(threshold, target_error) -> None:
    """``abstain.threshold`` or ``abstain.target_error`` (one at most), checked before any work."""
    if threshold is not None and target_error is not None:
        raise ConfigError(f"abstain.threshold={threshold} and abstain.target_error={target_error} are both set: "
                          "give one (a fixed confidence threshold, or the error rate the validation split chooses it for).")


def choose_threshold(record: dict | None, target_error: float, ckpt_path) -> float:
    """The threshold for ``target_error`` from a checkpoint's calibration record (its validation images'
    confidences); refused when the checkpoint has none or the target cannot be met."""
    if not record or "val_confidence" not in record:
        raise ConfigError(f"abstain.target_error={target_error}: ckpt_path={ckpt_path} holds no validation "
                          "confidences to choose a threshold from (written before calibration, or with "
                          "callbacks.calibration=null). Give abstain.threshold=<confidence> instead.")
    confidence = np.asarray(record["val_confidence"], dtype=float)
    correct = np.asarray(record["val_correct"], dtype=bool)
    threshold = threshold_for_target_error(confidence, correct, target_error)
    if threshold is None:
        raise ConfigError(f"abstain.target_error={target_error} cannot be met: on the {len(confidence)} validation "
                          f"images even the most confident answers err more often. Choose a larger target error.")
    return threshold


def abstain(predictions: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``predictions`` (predict's columns) with ``prediction`` set to ``"uncertain"`` where the confidence is
    below ``threshold``; the confidence and probability columns are kept, so the best guess stays readable."""
    out = predictions.copy()
    out["prediction"] = out["prediction"].astype(object)
    out.loc[out["confidence"].to_numpy() < threshold, "prediction"] = UNCERTAIN
    return out


def _row(scope: str, group: str, accepted: np.ndarray, correct: np.ndarray) -> dict:
    from maskdet.evaluation.statistics import wilson_interval

    n, k = len(accepted), int(accepted.sum())
    errors = int((~correct & accepted).sum())
    cov_low, cov_high = wilson_interval(k, n)
    err_low, err_high = wilson_interval(errors, k) if k else (math.nan, math.nan)
    return {"attribute": scope, "group": group, "n": n, "answered": k, "abstained": n - k,
            "coverage": k / n if n else math.nan, "coverage_low": cov_low, "coverage_high": cov_high,
            "abstention_rate": (n - k) / n if n else math.nan,
            "error": errors / k if k else math.nan, "error_low": err_low, "error_high": err_high,
            "error_without_abstention": float((~correct).mean()) if n else math.nan}


def abstention_report(predictions: pd.DataFrame, threshold: float, *, chosen: str,
                      attributes: Sequence[str] = BIAS.attributes, min_group_size: int = BIAS.min_group_size,
                      alpha: float = BIAS.alpha) -> dict:
    """Coverage and error at ``threshold`` on ``predictions`` (label, prediction, confidence, demographics),
    overall and per group, with Wilson 95 % intervals, and the concentration test (module docstring)."""
    from maskdet.evaluation.bias import with_group_columns
    from maskdet.evaluation.statistics import adjust_p_values, one_sided_two_proportion_test

    frame = with_group_columns(predictions)
    confidence = frame["confidence"].to_numpy(dtype=float)
    correct = (frame["label"] == frame["prediction"]).to_numpy()
    accepted = confidence >= threshold
    rows = [_row("overall", "all", accepted, correct)]
    tests = []
    for attribute in attributes:
        if attribute not in frame or (frame[attribute] == UNKNOWN).all():
            continue
        groups = frame[attribute].to_numpy()
        for group in sorted(set(groups)):
            mask = groups == group
            row = _row(attribute, str(group), accepted[mask], correct[mask])
            row["ranked"] = bool(mask.sum() >= min_group_size and group != UNKNOWN and (~mask).any())
            if row["ranked"]:
                rest_abstained, rest_n = int((~accepted[~mask]).sum()), int((~mask).sum())
                row["rest_abstention_rate"] = rest_abstained / rest_n
                row["p_value"] = one_sided_two_proportion_test(row["abstained"], row["n"], rest_abstained, rest_n)
                tests.append(len(rows))
            rows.append(row)
    adjusted = adjust_p_values([rows[i]["p_value"] for i in tests], "holm")
    warnings = []
    for i, p in zip(tests, adjusted):
        rows[i]["p_holm"] = float(p)
        if p < alpha:
            r = rows[i]
            warnings.append(f"abstention concentrates on {r['attribute']}={r['group']}: {r['abstention_rate']:.1%} of its "
                            f"{r['n']} test images are answered \"uncertain\", against {r['rest_abstention_rate']:.1%} of "
                            f"the rest (one-sided two-proportion z-test, Holm-corrected p {p:.2g} < {alpha}). Abstaining "
                            "mostly on one group is itself a bias finding: that group gets fewer answers.")
    curve = risk_coverage(confidence, correct)
    return {"threshold": float(threshold), "chosen": chosen, "alpha": alpha, "min_group_size": min_group_size,
            "aurc": area_under_risk_coverage(curve), "rows": rows, "warnings": warnings,
            "interval": "Wilson 95 % (coverage and error among answered images)",
            "test": "per ranked group, abstention rate vs the rest of the test split: pooled two-proportion "
                    "z-test, one-sided (higher), Holm over every group of every attribute"}


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f} %"


def format_markdown(report: dict) -> str:
    lines = ["# Abstention (test split)", "",
             f"Predictions with confidence below **{report['threshold']:.4f}** are answered \"uncertain\" "
             f"({md(report['chosen'])}). Area under the risk-coverage curve (AURC): {report['aurc']:.4f} "
             "(risk_coverage.csv, risk_coverage.png).", "",
             f"Intervals: {report['interval']}. Concentration test: {report['test']}, alpha {report['alpha']}.", ""]
    lines += [f"**Warning:** {md(w)}" for w in report["warnings"]] or \
        ["No group is abstained on significantly more than the rest."]
    lines += ["", "| attribute | group | n | coverage [95 %] | error when answering [95 %] | error without abstaining "
              "| abstention rate | rest | p (Holm) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        p = r.get("p_holm")
        lines.append(f"| {md(r['attribute'])} | {md(r['group'])} | {r['n']} | {_pct(r['coverage'])} "
                     f"[{_pct(r['coverage_low'])}, {_pct(r['coverage_high'])}] | {_pct(r['error'])} "
                     f"[{_pct(r['error_low'])}, {_pct(r['error_high'])}] | {_pct(r['error_without_abstention'])} "
                     f"| {_pct(r['abstention_rate'])} | {_pct(r.get('rest_abstention_rate'))} "
                     f"| {'–' if p is None else f'{p:.2g}'} |")
    return "\n".join(lines) + "\n"


def plot_risk_coverage(curve: pd.DataFrame, report: dict, path: Path) -> plt.Figure:
    import matplotlib

    matplotlib.use("Agg")  # as every report module: figures are files, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(curve["coverage"], curve["risk"], where="post", label="test split")
    overall = report["rows"][0]
    ax.plot([overall["coverage"]], [overall["error"]], "o", color="C3",
            label=f"threshold {report['threshold']:.3f}: coverage {overall['coverage']:.2f}, error {overall['error']:.3f}")
    ax.set_xlabel("coverage (share answered)")
    ax.set_ylabel("risk (error rate among answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(f"Risk-coverage curve (AURC {report['aurc']:.4f})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return fig


def write_abstention_report(predictions: pd.DataFrame, threshold: float, folder: str | Path, **options) -> dict:
    """abstention.md/.json, risk_coverage.csv/.png in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = abstention_report(predictions, threshold, **options)
    correct = (predictions["label"] == predictions["prediction"]).to_numpy()
    curve = risk_coverage(predictions["confidence"].to_numpy(dtype=float), correct)
    write_csv(curve, folder / "risk_coverage.csv")
    figure = plot_risk_coverage(curve, report, folder / "risk_coverage.png")
    import matplotlib.pyplot as plt  # imported by plot_risk_coverage, on the Agg backend

    plt.close(figure)
    write_json(folder / "abstention.json", report)
    write_text(folder / "abstention.md", format_markdown(report))
    return report


def abstain_from_config(options, predictions: pd.DataFrame | None, ckpt_path, detect: bool = False) -> pd.DataFrame | None:
    """predict's ``abstain.*``: with ``predictions`` None only checks the options (before any work);
    otherwise returns them with "uncertain" below the threshold (``abstain.threshold``, or the one the
    checkpoint's validation split gives for ``abstain.target_error``), unchanged when neither is set."""
    threshold = options.get("threshold") if options else None
    target_error = options.get("target_error") if options else None
    if threshold is None and target_error is None:
        return predictions
    if predictions is None:
        check_abstain_options(threshold, target_error)
        if detect:
            raise ConfigError("abstain.* applies to face crops, not to detect=true (its frames.csv counts every "
                              "face's class); drop abstain.threshold / abstain.target_error or detect=true.")
        if target_error is not None:
            choose_threshold(_checkpoint_record(ckpt_path), target_error, ckpt_path)  # refused now, not after the work
        return None
    if target_error is not None:
        threshold = choose_threshold(_checkpoint_record(ckpt_path), target_error, ckpt_path)
    out = abstain(predictions, threshold)
    log.info("abstain: threshold %.4f%s: %d of %d images answered \"uncertain\"", threshold,
             f" (validation split, target error {target_error:g})" if target_error is not None else "",
             int((out["prediction"] == UNCERTAIN).sum()), len(out))
    return out


def _checkpoint_record(ckpt_path) -> dict | None:
    from maskdet.models.calibration import read_calibration
    from maskdet.preflight import read_checkpoint

    return read_calibration(read_checkpoint(ckpt_path))

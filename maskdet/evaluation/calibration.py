"""Calibration before and after temperature scaling, on the test split, and the callback that fits the
temperature after training (``callbacks.calibration``).

Figures (each overall and per demographic group): NLL (mean negative log-likelihood of the true class),
Brier score (mean over images of the squared distance between the probability vector and the one-hot
label, summed over classes: 0 best, 2 worst) and ECE (top-label, ``metrics.ECE_BINS`` equal-width bins;
biased upwards on small groups, see ``metrics.expected_calibration_error``), before and after, with
percentile bootstrap 95 % intervals, and the change (after - before) with its paired bootstrap interval
(the same resamples for both). The probabilities before scaling are recovered exactly from the calibrated
ones: softmax(T log p) = softmax(z) for p = softmax(z / T).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from maskdet.data.demographics import UNKNOWN
from maskdet.evaluation.bias import with_group_columns
from maskdet.evaluation.metrics import ECE_BINS, expected_calibration_error
from maskdet.evaluation.options import BIAS
from maskdet.jsonfile import write_json
from maskdet.writing import md, write_csv, write_text

log = logging.getLogger("maskdet.calibration")

VAL_PREDICTIONS = "val_predictions.csv"  # in calibration/: the validation split's held-out probabilities
FIGURES = {"nll": "NLL", "brier": "Brier", "ece": "ECE"}


def uncalibrated_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z) from p = softmax(z / T): softmax(T log p) (a class whose p underflowed to 0 stays 0)."""
    with np.errstate(divide="ignore"):
        scaled = temperature * np.log(np.asarray(probs, dtype=np.float64))
    scaled -= scaled.max(1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(1, keepdims=True)


def _per_image(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    onehot = np.eye(probs.shape[1])[labels]
    return {"nll": -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, None)),
            "brier": ((probs - onehot) ** 2).sum(1),
            "confidence": probs.max(1), "correct": probs.argmax(1) == labels}


def _metrics(images: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric for each row of ``idx`` (one resample, or the sample itself, a row)."""
    return {"nll": images["nll"][idx].mean(1), "brier": images["brier"][idx].mean(1),
            "ece": expected_calibration_error(images["confidence"][idx], images["correct"][idx])}


def _rows(scope: str, group: str, before: dict, after: dict, mask: np.ndarray, n_boot: int, rng) -> list[dict]:
    where = np.flatnonzero(mask)
    whole = where[None, :]
    resampled = where[rng.integers(0, len(where), size=(n_boot, len(where)))]
    b, a = _metrics(before, whole), _metrics(after, whole)
    bb, ab = _metrics(before, resampled), _metrics(after, resampled)
    rows = []
    for name in FIGURES:
        q = lambda x: np.percentile(x, [2.5, 97.5])  # noqa: E731
        (bl, bh), (al, ah), (dl, dh) = q(bb[name]), q(ab[name]), q(ab[name] - bb[name])
        rows.append({"attribute": scope, "group": group, "n": int(len(where)), "figure": name,
                     "before": float(b[name][0]), "before_low": float(bl), "before_high": float(bh),
                     "after": float(a[name][0]), "after_low": float(al), "after_high": float(ah),
                     "change": float(a[name][0] - b[name][0]), "change_low": float(dl), "change_high": float(dh)})
    return rows


def calibration_report(predictions: pd.DataFrame, class_names: Sequence[str], temperature: float, *,
                       attributes: Sequence[str] = BIAS.attributes, n_bootstrap: int = BIAS.n_bootstrap, seed: int = BIAS.seed,
                       fitted: bool = True, val: dict | None = None) -> dict:
    """NLL, Brier and ECE before and after scaling by ``temperature``, overall and per group (module
    docstring), from ``predictions`` (calibrated: predictions.csv's probability columns)."""
    names = list(class_names)
    frame = with_group_columns(predictions)
    after_probs = frame[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float64)
    labels = frame["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    before = _per_image(uncalibrated_probabilities(after_probs, temperature), labels)
    after = _per_image(after_probs / after_probs.sum(1, keepdims=True), labels)
    rng = np.random.default_rng(seed)
    rows = _rows("overall", "all", before, after, np.ones(len(frame), bool), n_bootstrap, rng)
    for attribute in attributes:
        if attribute not in frame or (frame[attribute] == UNKNOWN).all():
            continue
        for group in sorted(set(frame[attribute])):
            rows += _rows(attribute, str(group), before, after, (frame[attribute] == group).to_numpy(), n_bootstrap, rng)
    return {"temperature": float(temperature), "fitted": bool(fitted), "val": val or {}, "test_images": len(frame),
            "rows": rows, "n_bootstrap": n_bootstrap, "seed": seed, "ece_bins": ECE_BINS,
            "interval": f"percentile bootstrap 95 % ({n_bootstrap} resamples of the images; the change's "
                        "interval from the same resamples before and after)",
            "brier": "mean over images of the sum over classes of (p - one-hot)^2 (0 best, 2 worst)"}


def _num(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def format_markdown(report: dict) -> str:
    t = report["temperature"]
    how = (f"fitted on the validation split ({report['val'].get('images', '?')} images; validation NLL "
           f"{_num(report['val'].get('val_nll_before', math.nan))} -> {_num(report['val'].get('val_nll_after', math.nan))})"
           if report["fitted"] else "not fitted (callbacks.calibration.temperature=false): before and after are the same")
    lines = ["# Calibration (test split)", "",
             f"Temperature scaling (Guo et al. 2017): T = **{t:.4f}**, {how}. T > 1 means the model was "
             "over-confident. Predictions are unchanged; only the confidences move.", "",
             f"Intervals: {report['interval']}. Brier: {report['brier']}. ECE: top-label, {report['ece_bins']} "
             "equal-width bins, biased upwards on small groups. Reliability diagrams: reliability_before.png, "
             "reliability_after.png.", "",
             "| attribute | group | n | figure | before [95 %] | after [95 %] | change [95 %] |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {md(r['attribute'])} | {md(r['group'])} | {r['n']} | {FIGURES[r['figure']]} | "
                     f"{_num(r['before'])} [{_num(r['before_low'])}, {_num(r['before_high'])}] | "
                     f"{_num(r['after'])} [{_num(r['after_low'])}, {_num(r['after_high'])}] | "
                     f"{r['change']:+.4f} [{r['change_low']:+.4f}, {r['change_high']:+.4f}] |")
    return "\n".join(lines) + "\n"


def write_calibration_report(predictions: pd.DataFrame, class_names: Sequence[str], temperature: float,
                             folder: str | Path, **options) -> dict:
    """calibration.md/.csv/.json and reliability_before.png / reliability_after.png in ``folder``."""
    from maskdet.evaluation.explain import reliability_diagram

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = calibration_report(predictions, class_names, temperature, **options)
    write_csv(pd.DataFrame(report["rows"]), folder / "calibration.csv")
    write_json(folder / "calibration.json", report)
    write_text(folder / "calibration.md", format_markdown(report))
    names = list(class_names)
    before = uncalibrated_probabilities(predictions[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float64), temperature)
    for name, confidence in (("before", before.max(1)), ("after", predictions["confidence"].to_numpy(dtype=float))):
        frame = pd.DataFrame({"label": predictions["label"], "prediction": predictions["prediction"], "confidence": confidence})
        plt.close(reliability_diagram(frame, folder / f"reliability_{name}.png",
                                      title=f"{name} temperature scaling (T = {temperature:.3f})"))
    return report


# ------------------------------------------------------------------------------------------- callback

class Calibration(L.Callback):
    """After fit: fit the temperature of the best checkpoint on the validation split and write it into
    best.ckpt (so the test, and every later evaluate / predict / explain / export, use it); after the first
    test: calibration and abstention reports into ``output_dir`` (rank zero, one process).

    ``temperature=false`` keeps T = 1 (the reports then show the model as trained); ``target_error``: the
    validation error rate the abstention threshold of the report is chosen for."""

    def __init__(self, output_dir: str, *, temperature: bool = True, target_error: float = 0.05,
                 attributes: Sequence[str] = BIAS.attributes, min_group_size: int = BIAS.min_group_size, alpha: float = BIAS.alpha,
                 n_bootstrap: int = BIAS.n_bootstrap, seed: int = BIAS.seed):
        self.output_dir = Path(output_dir)
        self.temperature = bool(temperature)
        self.target_error = float(target_error)
        self.attributes, self.min_group_size, self.alpha = list(attributes), int(min_group_size), float(alpha)
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)
        self.record: dict | None = None
        self.done = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from maskdet.models.calibration import (
            calibration_record,
            fit_temperature,
            split_logits,
            write_calibration,
        )

        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if not best or not Path(best).is_file() or trainer.datamodule is None:
            log.info("no best checkpoint to calibrate (fast_dev_run, or no validation): temperature stays 1")
            return
        if trainer.is_global_zero:
            # the best epoch's weights, not the last epoch's in pl_module (restored after)
            current = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            pl_module.load_state_dict(torch.load(best, map_location=pl_module.device, weights_only=True)["state_dict"])
            try:
                logits, labels, rows = split_logits(pl_module, trainer.datamodule, "val")
            finally:
                pl_module.load_state_dict(current)
            t = fit_temperature(logits, labels) if self.temperature else 1.0
            self.record = calibration_record(logits, labels, t, fitted=self.temperature)
            write_calibration(best, self.record)
            self.write_val_predictions(trainer.datamodule, rows, (logits.double() / t).softmax(1))
            log.info("temperature scaling: T = %.4f on %d validation images (NLL %.4f -> %.4f), written to %s",
                     t, len(labels), self.record["val_nll_before"], self.record["val_nll_after"], best)
        trainer.strategy.barrier()
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        pl_module.temperature.fill_(float(state.get("temperature", torch.ones(()))))  # test=false: still calibrated

    def write_val_predictions(self, datamodule, rows: torch.Tensor, probs: torch.Tensor) -> None:
        """``val_predictions.csv``: the best checkpoint's calibrated probabilities on the validation split, the
        images this run held out; a k-fold sweep's label-issue search (maskdet.evaluation.label_issues) reads them."""
        from maskdet.evaluation.reports import predictions_frame

        self.output_dir.mkdir(parents=True, exist_ok=True)
        frame = predictions_frame(datamodule.index, rows.numpy(), probs.numpy(), datamodule.class_names)
        write_csv(frame, self.output_dir / VAL_PREDICTIONS)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done or not trainer.is_global_zero or trainer.world_size > 1 or not pl_module.test_outputs:
            return
        self.done = True
        from maskdet.evaluation.abstention import threshold_for_target_error, write_abstention_report
        from maskdet.evaluation.reports import predictions_frame

        datamodule = trainer.datamodule
        rows, probs = (torch.cat(t) for t in zip(*pl_module.test_outputs))
        predictions = predictions_frame(datamodule.index, rows.numpy(), probs.numpy(), datamodule.class_names)
        t = float(pl_module.temperature)
        val = {k: v for k, v in (self.record or {}).items() if not isinstance(v, torch.Tensor)}
        report = write_calibration_report(predictions, datamodule.class_names, t, self.output_dir,
                                          attributes=self.attributes, n_bootstrap=self.n_bootstrap, seed=self.seed,
                                          fitted=bool(val.get("fitted", False)), val=val)
        overall = {r["figure"]: r for r in report["rows"] if r["attribute"] == "overall"}
        log.info("calibration (test split, T = %.3f): ECE %.4f -> %.4f, NLL %.4f -> %.4f, Brier %.4f -> %.4f (%s)",
                 t, overall["ece"]["before"], overall["ece"]["after"], overall["nll"]["before"], overall["nll"]["after"],
                 overall["brier"]["before"], overall["brier"]["after"], self.output_dir / "calibration.md")
        if self.record is None:
            return
        threshold = threshold_for_target_error(self.record["val_confidence"].numpy(),
                                               self.record["val_correct"].numpy(), self.target_error)
        chosen = f"chosen on the validation split for a target error of {self.target_error:g}"
        if threshold is None:
            threshold, chosen = 1.0 + 1e-9, f"no threshold reaches a validation error of {self.target_error:g}: all abstain"
        report = write_abstention_report(predictions, threshold, self.output_dir, chosen=chosen,
                                         attributes=self.attributes, min_group_size=self.min_group_size,
                                         alpha=self.alpha)
        row = report["rows"][0]
        log.info("abstention at %.4f (%s): test coverage %.3f, error when answering %.4f (%s)", threshold, chosen,
                 row["coverage"], row["error"], self.output_dir / "abstention.md")
        for warning in report["warnings"]:
            log.warning("%s", warning)

"""Test a model and write every report of the run folder; shared by training and ``maskdet.evaluate``."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
from PIL import Image

from maskdet.evaluation.bias import format_markdown, write_bias_report
from maskdet.evaluation.reports import predictions_frame, write_test_reports

log = logging.getLogger("maskdet.evaluation")


# TensorBoard shrinks an image to fit its card and shows it 1:1 with the card's "actual size" toggle; at
# this width 1:1 fits a laptop screen without sideways scrolling. Wider PNGs (bias.png is drawn at 1300 px
# for print, feature_maps.png at 1700) are downscaled to it.
TENSORBOARD_WIDTH = 960


def tensorboard_image(path: Path, width: int = TENSORBOARD_WIDTH) -> np.ndarray:
    """The PNG at ``path`` as an H x W x 3 array for ``add_image``, downscaled to ``width`` pixels if wider."""
    image = Image.open(path).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    return np.asarray(image)


def bias_summary(report: dict) -> dict[str, float]:
    """Flat figures for metrics.json and sweep summaries: each group's accuracy and each largest gap."""
    out = {f"{r['attribute']}/{r['group']}": r["accuracy"] for r in report["groups"]}
    for gap in report["gaps"]:
        if "gap" in gap:
            out[f"{gap['attribute']}/gap"] = gap["gap"]
            out[f"{gap['attribute']}/gap_p_value"] = gap["p_value"]
    return out


def test_and_report(trainer: L.Trainer, model, datamodule, output_dir: Path, ckpt_path: str | None = None,
                    bias: dict | None = None) -> tuple[dict, dict]:
    """``trainer.test`` then predictions.csv, classification report, confusion matrix and bias report
    (rank zero writes); returns the test metrics and the bias summary."""
    metrics = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    rows, probs = model.test_predictions()  # a collective under DDP: every rank takes part
    if not trainer.is_global_zero:
        return metrics, {}
    predictions = predictions_frame(datamodule.index, rows.numpy(), probs.numpy(), datamodule.class_names)
    text = write_test_reports(predictions, datamodule.class_names, output_dir)
    log.info("classification report (test split, %d images):\n%s", len(predictions), text)
    report = write_bias_report(predictions, datamodule.class_names, output_dir, **(bias or {}))
    log.info("bias report (%s):\n%s", output_dir / "bias_report.md", format_markdown(report))
    _log_to_tensorboard(trainer, report, output_dir)
    return metrics, bias_summary(report)


def _log_to_tensorboard(trainer: L.Trainer, report: dict, output_dir: Path) -> None:
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image"):
            continue
        for row in report["groups"]:
            experiment.add_scalar(f"bias/{row['attribute']}/{row['group']}/accuracy", row["accuracy"], trainer.global_step)
        for gap in report["gaps"]:
            if "gap" in gap:
                experiment.add_scalar(f"bias/{gap['attribute']}/largest_gap", gap["gap"], trainer.global_step)
        for name in ("bias.png", "confusion_matrix.png"):
            experiment.add_image(name.removesuffix(".png"), tensorboard_image(output_dir / name), trainer.global_step,
                                 dataformats="HWC")
        experiment.flush()

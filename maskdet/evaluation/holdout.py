"""The held-out test of a model (Lightning's test loop on the test split) and every report of the run folder;
shared by training and ``maskdet.evaluate``. (Named for the held-out split it scores, not for unit tests.)"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from PIL import Image

from maskdet.evaluation.bias import format_markdown, write_bias_report
from maskdet.evaluation.reports import TESTED_ON, predictions_frame, write_test_reports
from maskdet.jsonfile import write_json

log = logging.getLogger("maskdet.evaluation")


# Trainer settings that change what a run's metrics mean: how long and how it trained, and how much of
# the test split it saw. A sweep job resumed with another trainer.max_epochs keeps its job's overrides, so
# only this record tells it from its siblings.
TRAINER_SETTINGS = ("max_epochs", "max_steps", "min_epochs", "precision", "accumulate_grad_batches",
                    "gradient_clip_val", "limit_train_batches", "limit_val_batches", "limit_test_batches",
                    "check_val_every_n_epoch", "val_check_interval", "fast_dev_run", "world_size")


def images_fingerprint(images: pd.DataFrame) -> str:
    """sha256 over the sorted (content digest, class name) pairs of the test images: two runs share it only
    when they were tested on the same image contents with the same labels, wherever the files lie."""
    keys = images["digest"].where(images["digest"].astype(bool), "path:" + images["path"].astype(str)) \
        if "digest" in images.columns else "path:" + images["path"].astype(str)
    pairs = sorted(f"{key}\t{label}" for key, label in zip(keys, images["label_name"]))
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


def trainer_settings(trainer: L.Trainer) -> dict | None:
    """The trainer settings that matter (``TRAINER_SETTINGS``), or None when this trainer did not train
    (``maskdet.evaluate`` tests a saved checkpoint: its trainer's epochs say nothing about the model)."""
    if trainer.global_step == 0:
        return None
    settings = {name: getattr(trainer, name, None) for name in TRAINER_SETTINGS}
    for callback in trainer.early_stopping_callbacks:
        settings["early_stopping"] = f"{callback.monitor} patience {callback.patience} min_delta {callback.min_delta}"
    return settings


def tested_on(images: pd.DataFrame, class_names, trainer: L.Trainer) -> dict:
    """What a run was tested on, recorded so that compare and the cv summary pool and pair only runs
    tested alike: the test images' fingerprint and number, the class names and the trainer settings."""
    return {"fingerprint": images_fingerprint(images), "test_images": len(images), "class_names": list(class_names),
            "trainer": trainer_settings(trainer)}


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
    """``trainer.test`` then predictions.csv, classification report, confusion matrix, bias report and
    tested_on.json (rank zero writes; ``write_metrics`` copies the latter into metrics.json); returns the test
    metrics and the bias summary."""
    from maskdet.loggers import at_final_step

    with at_final_step(trainer):  # TensorBoard: test metrics at the last training step, not one past it
        metrics = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
    rows, probs = model.test_predictions()  # a collective under DDP: every rank takes part
    if not trainer.is_global_zero:
        return metrics, {}
    predictions = predictions_frame(datamodule.index, rows.numpy(), probs.numpy(), datamodule.class_names)
    write_json(Path(output_dir) / TESTED_ON, tested_on(datamodule.index.loc[np.unique(rows.numpy())],
                                                        datamodule.class_names, trainer))
    text = write_test_reports(predictions, datamodule.class_names, output_dir)
    log.info("classification report (test split, %d images):\n%s", len(predictions), text)
    report = write_bias_report(predictions, datamodule.class_names, output_dir, **(bias or {}))
    log.info("bias report (%s):\n%s", output_dir / "bias_report.md", format_markdown(report))
    _log_to_tensorboard(trainer, report, output_dir)
    return metrics, bias_summary(report)


def _log_to_tensorboard(trainer: L.Trainer, report: dict, output_dir: Path) -> None:
    from maskdet.loggers import final_step

    step = final_step(trainer)  # at the last training step: single points do not stretch the step axis
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image"):
            continue
        for row in report["groups"]:
            experiment.add_scalar(f"bias/{row['attribute']}/{row['group']}/accuracy", row["accuracy"], step)
        for gap in report["gaps"]:
            if "gap" in gap:
                experiment.add_scalar(f"bias/{gap['attribute']}/largest_gap", gap["gap"], step)
        for name in ("bias.png", "confusion_matrix.png"):
            experiment.add_image(name.removesuffix(".png"), tensorboard_image(output_dir / name), step,
                                 dataformats="HWC")
        experiment.flush()

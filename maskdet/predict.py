"""Classify face crops with a trained checkpoint.

    python -m maskdet.predict ckpt_path=<run>/checkpoints/last.ckpt input=/photos/crops
    python -m maskdet.predict ckpt_path=... input='shots/*.png' annotate=true

Writes predictions.csv (path, prediction, confidence, one probability column per class) and
skipped.csv (unreadable files with their reason) into its run folder; annotate=true adds labelled copies.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from rich.progress import track

from maskdet.cli import entry_point
from maskdet.config import register_resolvers
from maskdet.errors import exit_on_error
from maskdet.evaluate import load_classifier
from maskdet.inference import annotate, list_inputs, predict_files
from maskdet.preflight import check_config

log = logging.getLogger("maskdet.predict")
register_resolvers()


def predict(cfg: DictConfig) -> pd.DataFrame:
    model = load_classifier(cfg.ckpt_path)
    if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu":
        model.cuda()
    files, skipped = list_inputs(str(cfg.input))
    predictions, unreadable = predict_files(model, files, cfg.batch_size,
                                            progress=lambda b: track(b, description="predicting", transient=True))
    skipped += unreadable
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(out / "predictions.csv", index=False)
    pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(out / "skipped.csv", index=False)
    if cfg.annotate:
        annotate(predictions, out / "annotated")
    log.info("%d images predicted, %d skipped; %s", len(predictions), len(skipped), out / "predictions.csv")
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    return predictions


@entry_point("predict")
def main(cfg: DictConfig) -> None:
    exit_on_error(check_config, cfg, "predict")
    exit_on_error(predict, cfg)


if __name__ == "__main__":
    main()

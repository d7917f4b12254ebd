"""Classify face crops with a trained checkpoint.

    python -m maskdet.predict ckpt_path=<run>/checkpoints/best.ckpt input=/photos/crops
    python -m maskdet.predict ckpt_path=... input='shots/*.png' annotate=true

Writes predictions.csv (path, prediction, confidence, one probability column per class) and
skipped.csv (unreadable files with their reason) into its run folder; annotate=true adds labelled copies.

    python -m maskdet.predict ckpt_path=... input=group.jpg detect=true
    python -m maskdet.predict ckpt_path=... input=street.mp4 detect=true every_n_frames=5

detect=true finds the faces first (maskdet.detect; detector=haar or detector=onnx) in photos and videos:
predictions.csv then has one row per face (source, frame, x, y, w, h, detector_score, prediction,
confidence, prob_<class>), frames.csv one row per photo or analysed video frame (faces, masked share,
count per class), and annotated/ the photos and videos with coloured boxes and labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from maskdet import runfolder
from maskdet.checkpoints import load_classifier, warn_if_demonstration
from maskdet.cli import entry_point
from maskdet.config import register_resolvers
from maskdet.console import summary
from maskdet.data.images import IMAGE_EXTENSIONS
from maskdet.errors import DataError, exit_on_error
from maskdet.inference import annotate, list_inputs, predict_files
from maskdet.preflight import check_config
from maskdet.writing import write_csv

log = logging.getLogger("maskdet.predict")
register_resolvers()


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Every check that needs no data first (also when called from Python), then the predictions."""
    check_config(cfg, "predict")
    from maskdet.evaluation.abstention import abstain_from_config

    abstain_from_config(cfg.get("abstain"), None, cfg.ckpt_path, detect=cfg.get("detect", False))  # refuse early
    detector = None
    if cfg.get("detect", False):  # a wrong detector setting stops the run before the checkpoint is loaded
        from maskdet.detect import build_detector

        detector = build_detector(OmegaConf.to_container(cfg.get("detector") or {}, resolve=True))
    model = load_classifier(cfg.ckpt_path, list(cfg.get("trusted_code") or []), lightning=False)
    warn_if_demonstration(model, cfg.ckpt_path)
    if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu":
        model.cuda()
    if detector is not None:
        return predict_scenes(cfg, model, detector)
    files, skipped = list_inputs(str(cfg.input))
    if not files and not skipped:
        raise DataError(f"No images in input={cfg.input}: it holds no file of a type predict reads "
                        f"({', '.join(sorted(IMAGE_EXTENSIONS))}). Pass a folder of face crops, an image file or a "
                        "glob such as 'faces/*.jpg'.")
    predictions, unreadable = predict_files(model, files, cfg.batch_size)
    skipped += unreadable
    predictions = abstain_from_config(cfg.get("abstain"), predictions, cfg.ckpt_path)  # "uncertain" below it
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(predictions, out / "predictions.csv")
    write_csv(pd.DataFrame(skipped, columns=["path", "reason"]), out / "skipped.csv")
    if cfg.annotate:
        annotate(predictions, out / "annotated")
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    summary("%d images predicted, %d skipped; %s", len(predictions), len(skipped), out / "predictions.csv")
    if predictions.empty:
        raise DataError(f"None of the files named by input={cfg.input} could be classified ({len(skipped)} skipped, "
                        f"each with its reason in {out / 'skipped.csv'}).")
    return predictions


def predict_scenes(cfg: DictConfig, model, detector) -> pd.DataFrame:
    """detect=true: the faces in photos and videos, one row per face."""
    from maskdet.data.images import IMAGE_EXTENSIONS
    from maskdet.detect import VIDEO_EXTENSIONS, detect_and_classify

    files, skipped = list_inputs(str(cfg.input), IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scenes = detect_and_classify(model, detector, files, cfg.batch_size, cfg.every_n_frames,
                                 out / "annotated" if cfg.annotate else None)
    skipped += scenes.skipped
    write_csv(scenes.faces, out / "predictions.csv")
    write_csv(scenes.frames, out / "frames.csv")
    write_csv(pd.DataFrame(skipped, columns=["path", "reason"]), out / "skipped.csv")
    for s in skipped:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    summary("%d faces in %d photos or video frames, %d files skipped; %s", len(scenes.faces), len(scenes.frames),
            len(skipped), out / "predictions.csv")
    if scenes.frames.empty:
        raise DataError(f"None of the files named by input={cfg.input} could be read ({len(skipped)} skipped, "
                        f"each with its reason in {out / 'skipped.csv'}).")
    return scenes.faces


@entry_point("predict")
def main(cfg: DictConfig) -> None:
    exit_on_error(predict, cfg, on_error=lambda err: runfolder.remove_if_unstarted(cfg.paths.output_dir))


if __name__ == "__main__":
    main()

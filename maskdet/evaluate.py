"""Re-evaluate a checkpoint on its test split, another dataset, or a subset; write every report.

    python -m maskdet.evaluate ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt
    python -m maskdet.evaluate ckpt_path=... +data.subset.gender=female data.cap_per_class=200
    python -m maskdet.evaluate ckpt_path=... data=folder data.root=/other/faces

The data config is the training run's own (``<run>/.hydra/config.yaml``), so the split is the one the
model was trained with; ``data.*`` overrides change it, and ``data=<source>`` replaces it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskdet import runfolder
from maskdet.cli import checkpoint_and_data, entry_point
from maskdet.config import register_resolvers
from maskdet.console import summary
from maskdet.data.report import build_report, write_report
from maskdet.errors import ConfigError, exit_on_error
from maskdet.evaluation.holdout import test_and_report
from maskdet.evaluation.reports import write_metrics
from maskdet.preflight import check_config

log = logging.getLogger("maskdet.evaluate")
register_resolvers()


def evaluate(cfg: DictConfig) -> dict:
    """Every check that needs no data first (also when called from Python), then the test and its reports."""
    check_config(cfg, "evaluate")
    L.seed_everything(cfg.seed)
    ckpt_path = Path(cfg.ckpt_path)
    model, datamodule, data_cfg = checkpoint_and_data(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if datamodule.class_names != list(model.hparams.class_names):
        raise ConfigError(f"The data's classes {datamodule.class_names} differ from the checkpoint's "
                          f"{list(model.hparams.class_names)}: evaluate on data with the same classes (or data.label_map).")
    detector = _scene_detector(cfg, datamodule)  # its extras are refused now, before the test
    write_report(build_report(datamodule.data, datamodule.settings.source_name), output_dir)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    test_metrics, bias = test_and_report(trainer, model, datamodule, output_dir, None, cfg.get("bias"))
    metrics = {"test": {k: float(v) for k, v in test_metrics.items()}, "bias": bias, "checkpoint": str(ckpt_path),
               "data": OmegaConf.to_container(data_cfg, resolve=True)}
    robustness = cfg.get("robustness")
    if robustness is not None and robustness.get("enabled"):
        from maskdet.evaluation.robustness import write_robustness_report

        options = {k: v for k, v in OmegaConf.to_container(robustness, resolve=True).items() if k != "enabled"}
        report = write_robustness_report(model, datamodule, output_dir / "robustness",
                                         device=trainer.strategy.root_device, **options)
        metrics["robustness"] = {f"{r['corruption']}@{r['severity']}": r["accuracy"] for r in report["rows"]
                                 if r["attribute"] == "overall"}
        summary("robustness: %s", output_dir / "robustness" / "robustness.md")
    if detector is not None:  # data=voc|yolo|coco: detection + classification on the photos
        metrics["scenes"] = _score_scenes(cfg, model, detector, datamodule, output_dir / "scenes")
    write_metrics(metrics, output_dir)
    log.info("metrics: %s\nrun folder: %s", json.dumps(metrics["test"]), output_dir)
    summary("run folder: %s", output_dir)
    summary("test acc %.4f, macro-F1 %.4f on %d images", metrics["test"]["test/acc"], metrics["test"]["test/f1"],
            int((datamodule.data.used["split"] == "test").sum()))
    return metrics


def _scene_detector(cfg: DictConfig, datamodule):
    """The detector that scores a scene dataset (``scenes.enabled`` and data with boxes), built with its extras
    checked; None for other data."""
    scenes = cfg.get("scenes")
    if scenes is None or not scenes.get("enabled", True):
        return None
    from maskdet.evaluation.scenes import is_scene_data, require_map_backend

    if not is_scene_data(datamodule.data.index):
        return None
    from maskdet.detect import build_detector

    require_map_backend()
    return build_detector(OmegaConf.to_container(cfg.get("detector") or {}, resolve=True))


def _score_scenes(cfg: DictConfig, model, detector, datamodule, folder: Path) -> dict:
    """The scene dataset's test photos through ``detector`` and the model (maskdet/evaluation/scenes.py)."""
    from maskdet.evaluation.scenes import write_scene_report

    report = write_scene_report(model.eval(), detector, datamodule.data.index, datamodule.data.root,
                                datamodule.class_names, folder, iou=float(cfg.scenes.iou),
                                gallery_size=int(cfg.scenes.gallery_size))
    summary("scenes: face recall %.3f, precision %.3f, mAP@0.5 %.3f on %d test photos (%s)", report["recall"],
            report["precision"], report["map_50"], report["photos"], folder / "scenes.md")
    return {k: report[k] for k in ("recall", "precision", "map_50", "true_masked_share", "estimated_masked_share")}


@entry_point("evaluate")
def main(cfg: DictConfig) -> None:
    exit_on_error(evaluate, cfg, on_error=lambda err: runfolder.remove_if_unstarted(cfg.paths.output_dir))


if __name__ == "__main__":
    main()

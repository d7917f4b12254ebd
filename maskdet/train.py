"""Train, then test the best checkpoint and write the run's reports.

    python -m maskdet.train                                  # the seed's custom CNN on the embedded dataset
    python -m maskdet.train +experiment=resnet18_frozen      # seed b's transfer learning
    python -m maskdet.train data=folder data.root=/my/faces  # your own class folders
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from maskdet.config import check_keys, register_resolvers
from maskdet.data.report import format_report, write_report
from maskdet.errors import ConfigError, MaskdetError
from maskdet.evaluation.cv import METRICS, write_summary
from maskdet.evaluation.reports import write_metrics
from maskdet.evaluation.subsets import compare_subsets
from maskdet.evaluation.testing import test_and_report
from maskdet.preflight import preflight_train

log = logging.getLogger("maskdet.train")
register_resolvers()


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()}


def resume_into_original_run(cfg: DictConfig) -> None:
    """With ``ckpt_path=<run>/checkpoints/last.ckpt``, continue writing into that run's folder."""
    if not cfg.get("ckpt_path"):
        return
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist: pass the path of a .ckpt file to resume from.")
    run_dir = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and (run_dir / "data_report.json").is_file():
        log.info("resuming %s: outputs go to the original run folder %s", ckpt, run_dir)
        OmegaConf.update(cfg, "paths.output_dir", str(run_dir))


def train(cfg: DictConfig) -> dict:
    """Run one training job described by ``cfg``; return the figures written to ``metrics.json``."""
    preflight_train(cfg)
    started = time.time()
    for group in ("data", "model", "trainer"):
        check_keys(cfg[group], group)
    resume_into_original_run(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    saved = output_dir / ".hydra" / "config.yaml"
    if not saved.exists():  # called from Python, not the CLI: keep the config evaluate/export/explain read
        saved.parent.mkdir(exist_ok=True)
        OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, saved, resolve=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if rank_zero_only.rank == 0:
        report = datamodule.report()
        write_report(report, output_dir)
        log.info("data report (%s):\n%s", output_dir / "data_report.json", format_report(report))

    model = instantiate(cfg.model, num_classes=datamodule.num_classes, class_names=datamodule.class_names,
                        image_size=datamodule.image_size)
    if datamodule.feature_cache and datamodule.decoded_cache and model.hparams.freeze == "backbone" \
            and datamodule.augment is None:
        log.info("frozen backbone without augmentation: training the head on cached backbone features")
        on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
        datamodule.use_backbone_features(model.to("cuda" if on_gpu else "cpu").backbone_features, model.backbone_key())
        model.cpu()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    val_metrics = {k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("val/")}
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    test_metrics, bias = test_and_report(trainer, model, datamodule, output_dir, best, cfg.get("bias")) \
        if cfg.get("test", True) else ({}, {})

    study = cfg.get("bias_study")
    if study and test_metrics and trainer.world_size == 1:
        text = compare_subsets(trainer, model, lambda **kw: instantiate(cfg.data, **kw), study.subsets,
                               study.compare, study.cap_per_class, output_dir)
        log.info("bias study (%s):\n%s", output_dir / "bias_study.md", text)
        print(text)

    metrics = {
        "val": val_metrics,
        "test": _scalars(test_metrics),
        "bias": bias,
        "best_checkpoint": best,
        "epochs_trained": trainer.current_epoch,
        "num_classes": datamodule.num_classes,
        "class_names": datamodule.class_names,
        "wall_time_s": round(time.time() - started, 1),
    }
    for logger in trainer.loggers:
        logger.log_metrics({f"final/{k}": v for k, v in metrics["test"].items()}, step=trainer.global_step)
    if trainer.is_global_zero:
        write_metrics(metrics, output_dir)
        log.info("metrics: %s\nrun folder: %s", json.dumps(metrics["test"]), output_dir)
    return metrics


def train_cv(cfg: DictConfig) -> dict:
    """All folds inside one job (caches reused), for a search whose objective is cross-validated.
    Each fold runs in ``fold_<k>/``; the mean validation metrics are returned and summarised."""
    output_dir = Path(cfg.paths.output_dir)
    for fold in range(cfg.data.num_folds):
        fold_cfg = cfg.copy()
        OmegaConf.update(fold_cfg, "data.fold", fold)
        OmegaConf.update(fold_cfg, "paths.output_dir", str(output_dir / f"fold_{fold}"))
        train(fold_cfg)
    runs, summary = write_summary(output_dir)
    row = summary.iloc[0]
    metrics = {stage: {m: float(row[f"{m} mean"]) for m in METRICS if m.startswith(stage)} for stage in ("val", "test")}
    metrics.update(folds=int(row["folds"]), failed=int(row["failed"]), cv_in_job=True)
    write_metrics(metrics, output_dir)  # the job's own figures: means over its folds
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train_cv(cfg) if cfg.get("cv_in_job") else train(cfg)
    except Exception as err:  # noqa: BLE001 - reported, never swallowed silently
        if multirun:  # the sweep goes on; its summary lists this job with the error
            failed = Path(cfg.paths.output_dir) / "failed.json"
            failed.write_text(json.dumps({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}))
            log.exception("job failed; recorded in %s", failed)
            return None
        if isinstance(err, MaskdetError):
            log.error("%s", err)
            print(f"\nmaskdet: {err}", file=sys.stderr)
            sys.exit(1)
        raise
    return metrics["val"].get(cfg.get("optimized_metric", "val/acc_best"))


if __name__ == "__main__":
    main()

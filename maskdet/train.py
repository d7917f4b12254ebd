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
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskdet.config import check_keys, register_resolvers
from maskdet.data.report import format_report, write_report
from maskdet.errors import MaskdetError
from maskdet.evaluation.reports import predictions_frame, write_metrics, write_test_reports

log = logging.getLogger("maskdet.train")
register_resolvers()


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()}


def train(cfg: DictConfig) -> dict:
    """Run one training job described by ``cfg``; return the figures written to ``metrics.json``."""
    started = time.time()
    for group in ("data", "model", "trainer"):
        check_keys(cfg[group], group)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
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
    test_metrics = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)[0] if cfg.get("test", True) else {}

    metrics = {
        "val": val_metrics,
        "test": _scalars(test_metrics),
        "best_checkpoint": best,
        "epochs_trained": trainer.current_epoch,
        "num_classes": datamodule.num_classes,
        "class_names": datamodule.class_names,
        "wall_time_s": round(time.time() - started, 1),
    }
    if test_metrics and trainer.is_global_zero:
        rows, probs = model.test_predictions()
        predictions = predictions_frame(datamodule.index, rows.numpy(), probs.numpy(), datamodule.class_names)
        text = write_test_reports(predictions, datamodule.class_names, output_dir)
        log.info("classification report (test split, %d images):\n%s", len(predictions), text)
    for logger in trainer.loggers:
        logger.log_metrics({f"final/{k}": v for k, v in metrics["test"].items()}, step=trainer.global_step)
    if trainer.is_global_zero:
        write_metrics(metrics, output_dir)
        log.info("metrics: %s\nrun folder: %s", json.dumps(metrics["test"]), output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except MaskdetError as err:
        log.error("%s", err)
        print(f"\nmaskdet: {err}", file=sys.stderr)
        sys.exit(1)
    return metrics["val"].get(cfg.get("optimized_metric", "val/acc_best"))


if __name__ == "__main__":
    main()

"""One training job: build the data and model, fit, test the best checkpoint, write the run's reports.

The work behind ``python -m maskdet.train`` (``maskdet/train.py``, the entry point, which Hydra composes and
checks first, without importing this module's PyTorch Lightning). No Hydra composition here: ``train`` takes
a composed config, so it runs from plain Python and from tests alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from maskdet import loggers, runfolder
from maskdet.console import summary
from maskdet.data.datamodule import MaskDataModule
from maskdet.data.prepare import PreparedData
from maskdet.data.report import build_report, format_report, write_report
from maskdet.data.settings import DataSettings
from maskdet.data.splits import splits_table
from maskdet.errors import ConfigError, DataError, exit_on_error
from maskdet.evaluation.cv import train_folds
from maskdet.evaluation.holdout import test_and_report
from maskdet.evaluation.reports import write_metrics
from maskdet.evaluation.subsets import compare_subsets
from maskdet.jsonfile import dumps
from maskdet.models.networks import fetch_weights
from maskdet.preflight import preflight_train
from maskdet.resume import Resume, check_resume

log = logging.getLogger("maskdet.train")


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()}


def train(cfg: DictConfig) -> dict:
    """Run one training job described by ``cfg``; return the metrics written to ``metrics.json``.

    Everything that can be refused (keys, a resume that would change the experiment) is refused before any
    data work. A failure once training has started leaves ``failed.json`` in the run folder.
    """
    preflight_train(cfg)
    resume = check_resume(cfg)
    fetch_weights(cfg.model.architecture, cfg.model.get("weights"))  # offline? say so before any data work
    if resume is not None and resume.run_dir is not None:  # Python API; the CLI is there already (hydra/train.yaml)
        OmegaConf.update(cfg, "paths.output_dir", str(resume.run_dir))
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank != 0:  # a DDP process Lightning started inside rank 0's run: rank 0 owns the folder
        return _train_in(cfg, output_dir, resume)
    if resume is None or resume.run_dir is None:
        runfolder.refuse_existing_run(output_dir, "train", own_config=True)
    with runfolder.training_lock(output_dir):  # a second resume of this run is refused, not interleaved
        if resume is not None:
            runfolder.clear_results(output_dir)  # a failed resume must leave no older result beside failed.json
        return _train_in(cfg, output_dir, resume)


def _train_in(cfg: DictConfig, output_dir: Path, resume: Resume | None) -> dict:
    started = time.time()
    saved = output_dir / runfolder.CONFIG
    if not saved.exists():  # called from Python, not the CLI: keep the config evaluate/export/explain read
        saved.parent.mkdir(exist_ok=True)
        OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, saved, resolve=True)
    if resume is not None:
        log.info("resuming from %s (end of epoch %d): outputs go to %s", resume.ckpt_path, resume.epoch, output_dir)
    L.seed_everything(cfg.seed, workers=True)

    settings = instantiate(cfg.data)
    datamodule = MaskDataModule(settings)
    datamodule.setup("fit")  # builds what is missing; Lightning's prepare_data in fit then has nothing to do
    data = datamodule.data
    require_splits(data, settings, test=cfg.get("test", True))
    if rank_zero_only.rank == 0:
        report = build_report(data, settings.source_name)
        write_report(report, output_dir, splits_table(data.index, data.root))
        log.info("data report (%s):\n%s", output_dir / "data_report.json", format_report(report))

    model = instantiate(cfg.model, num_classes=datamodule.num_classes, class_names=datamodule.class_names,
                        image_size=settings.image_size)
    if settings.serves_backbone_features and model.hparams.freeze == "backbone":
        log.info("frozen backbone without augmentation: training the head on cached backbone features")
        on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
        datamodule.use_backbone_features(model.to("cuda" if on_gpu else "cpu").backbone_features, model.backbone_key())
        model.cpu()
    log.info("model %s: %d parameters, %d trainable", cfg.model.architecture, sum(p.numel() for p in model.parameters()),
             sum(p.numel() for p in model.parameters() if p.requires_grad))
    callbacks = {name: instantiate(c) for name, c in (cfg.get("callbacks") or {}).items() if c is not None}
    run_loggers = [instantiate(c, **loggers.resume_options(c, resume.global_step if resume else None))
                   for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=list(callbacks.values()), logger=run_loggers or False)
    say_what_does_not_apply(cfg, settings, trainer, callbacks)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume.ckpt_path if resume else None)
        # after a resume of a finished run no epoch runs: the last epoch's figures come from its checkpoint
        val_metrics = {k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("val/")} \
            or dict(model.resumed_val_metrics)
        best = runfolder.own_best_checkpoint(output_dir, getattr(callbacks.get("model_checkpoint"), "best_model_path", None))
        test_metrics, bias = test_and_report(trainer, model, datamodule, output_dir, best, cfg.get("bias")) \
            if cfg.get("test", True) else ({}, {})

        study = cfg.get("bias_study")
        if study and test_metrics and trainer.world_size == 1:
            text = compare_subsets(trainer, model, lambda **kw: MaskDataModule(replace(settings, **kw)), study.subsets,
                                   study.compare, study.cap_per_class, output_dir)
            log.info("bias study (%s):\n%s", output_dir / "bias_study.md", text)
            summary("bias study: %s", output_dir / "bias_study.md")
    except BaseException as err:
        failure = runfolder.training_failed(output_dir, err, record=trainer.is_global_zero)  # failed.json
        if trainer.is_global_zero:
            loggers.log_failure(trainer, loggers.hparams_of(cfg), err)  # the TensorBoard session marked failed
        if failure is not err:
            raise failure from err
        raise

    metrics = {
        "val": val_metrics,
        "test": _scalars(test_metrics),
        "bias": bias,
        "best_checkpoint": best,
        "best_epoch": int(torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"]) if best else None,
        "epochs_trained": trainer.current_epoch,
        "num_classes": datamodule.num_classes,
        "class_names": datamodule.class_names,
        "wall_time_s": round(time.time() - started, 1),
    }
    if resume is not None:
        metrics["resumed_from_epoch"] = resume.epoch
        metrics["resumed_with_changes"] = resume.changed  # e.g. trainer.max_epochs: not pooled with its siblings
    loggers.log_final(trainer, loggers.hparams_of(cfg), metrics)  # the HParams tab's row
    if trainer.is_global_zero:
        write_metrics(metrics, output_dir)
        log.info("metrics: %s\nrun folder: %s", dumps(metrics["test"]), output_dir)
        summarise(output_dir, data, metrics)
    return metrics


def require_splits(data: PreparedData, settings: DataSettings, test: bool) -> None:
    """A split the run needs but the data does not have is said before training, not after it."""
    used = data.used
    where = f"data.source={settings.source_name} ({data.root})"
    if not (used["split"] == "val").any():
        raise DataError(f"The validation split is empty for {where}: a source with fixed splits needs "
                        "validation images (a Roboflow valid/ folder, manifest rows with split=val).")
    if test and not (used["split"] == "test").any():
        raise DataError(f"The test split is empty for {where} (a Roboflow export without test/, a manifest "
                        "without split=test rows, or a subset with no test images), so the run could not be "
                        "tested after training. Add test images, or pass test=false to train without testing.")


def say_what_does_not_apply(cfg: DictConfig, settings: DataSettings, trainer: L.Trainer, callbacks: dict) -> None:
    """Options that cannot be honoured on this path are refused or announced, never silently ignored."""
    if settings.balance_by and trainer.world_size > 1:  # data.decoded_cache=false: refused by DataSettings
        raise ConfigError(f"data.balance_by={list(settings.balance_by)} balances training batches only in a single "
                          "process; it cannot be honoured under DDP (several devices). Drop data.balance_by, or "
                          "train on one device.")
    if trainer.world_size > 1:
        log.warning("DDP over %d processes: data.batch_size=%d is per process (effective batch %d).",
                    trainer.world_size, settings.batch_size, settings.batch_size * trainer.world_size)
        if cfg.get("bias_study"):
            log.warning("bias_study is skipped under DDP: run the study with trainer.devices=1.")
        if callbacks.get("explanations") is not None:
            log.warning("explanations are skipped under DDP: run python -m maskdet.explain ckpt_path=<best.ckpt>.")


def summarise(output_dir: Path, data: PreparedData, metrics: dict) -> None:
    """The console's view of a run: three lines, or one per job in a sweep (reports are in the files)."""
    test, val = metrics["test"], metrics["val"]
    gaps = {k.removesuffix("/gap"): v for k, v in metrics["bias"].items() if k.endswith("/gap")}
    worst = max(gaps, key=lambda k: abs(gaps[k]), default=None)
    result = (f"test acc {test['test/acc']:.4f}, macro-F1 {test['test/f1']:.4f}" if test else "not tested") \
        + (f"; largest gap {worst} {gaps[worst]:.3f} (p {metrics['bias'].get(worst + '/gap_p_value', float('nan')):.2g})"
           if worst else "")
    epochs = f"{metrics['epochs_trained']} epochs (best {metrics['best_epoch']}, val/acc_best " \
             f"{val.get('val/acc_best', float('nan')):.4f})"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        summary("job %s: %s; %s", output_dir.name, result, epochs)
        return
    used = data.used["split"].value_counts()
    summary("run folder: %s", output_dir)
    summary("data: %d images (train %d, val %d, test %d), %d files skipped (data_report.json)", int(used.sum()),
            used.get("train", 0), used.get("val", 0), used.get("test", 0), len(data.skipped))
    summary("trained %s; %s", epochs, result)


def run_job(cfg: DictConfig) -> float | None:
    """The Hydra job of ``python -m maskdet.train``: one run (or all folds, ``cv_in_job``); in a sweep a
    failure is recorded and the sweep goes on; returns the metric a sweeper optimises."""
    job = (lambda c: train_folds(c, train)) if cfg.get("cv_in_job") else train
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        try:
            metrics = job(cfg)
        except Exception as err:  # noqa: BLE001 - the sweep goes on; its summary lists this job with the error
            output_dir = Path(cfg.paths.output_dir)
            if not (output_dir / runfolder.FAILED).exists():
                runfolder.mark_failed(output_dir, err)
            log.exception("job failed; recorded in %s", output_dir / runfolder.FAILED)
            return None
    else:
        metrics = exit_on_error(job, cfg, on_error=lambda err: runfolder.remove_unstarted_run(Path(cfg.paths.output_dir), cfg.get("ckpt_path"), err))
    return metrics["val"].get(cfg.get("optimized_metric", "val/acc_best"))

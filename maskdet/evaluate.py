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
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from maskdet.cli import entry_point
from maskdet.config import check_keys, register_resolvers
from maskdet.data.report import write_report
from maskdet.errors import ConfigError, exit_on_error
from maskdet.evaluation.reports import write_metrics
from maskdet.evaluation.testing import test_and_report
from maskdet.models import MaskClassifier
from maskdet.preflight import check_config, read_checkpoint

log = logging.getLogger("maskdet.evaluate")
register_resolvers()


def load_classifier(ckpt_path: str | Path) -> MaskClassifier:
    """Load a maskdet checkpoint safely (``weights_only``); refuse anything else with a clear message."""
    checkpoint = read_checkpoint(ckpt_path)
    hparams = checkpoint["hyper_parameters"]
    model = MaskClassifier(**{**hparams, "weights": None})  # the state dict below replaces any initial weights
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        first = " ".join([line.strip() for line in str(err).splitlines() if line.strip()][:2]).rstrip(".")
        raise ConfigError(f"ckpt_path={ckpt_path}: its weights do not fit the model its hyper-parameters describe "
                          f"({hparams['architecture']}, {len(hparams['class_names'])} classes, "
                          f"{hparams['image_size']} px): {first}. The file was changed after maskdet.train wrote "
                          "it; use a checkpoint as written by maskdet.train.") from None
    return model.eval()


def data_config(cfg: DictConfig, ckpt_path: Path) -> DictConfig:
    """The training run's data config with this command's ``data.*`` overrides applied on top."""
    task = HydraConfig.get().overrides.task if HydraConfig.initialized() else []  # [] when called from Python
    overrides = [o for o in task if o.lstrip("+~").split("=")[0].split(".")[0] == "data"]
    run_config = ckpt_path.resolve().parent.parent / ".hydra" / "config.yaml"
    if any(o.startswith("data=") for o in overrides) or not run_config.is_file():
        if not run_config.is_file():
            log.warning("%s not found: using data settings from the command line and defaults", run_config)
        return cfg.data
    data = OmegaConf.load(run_config).data
    OmegaConf.set_struct(data, False)
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if override.startswith("~"):
            OmegaConf.update(data, key.removeprefix("~data."), None, force_add=True)
        else:
            OmegaConf.update(data, key.removeprefix("data."), OmegaConf.from_dotlist([f"v={value}"]).v, force_add=True)
    OmegaConf.update(data, "cache_dir", cfg.data.cache_dir)
    return data


def checkpoint_and_data(cfg: DictConfig) -> tuple[MaskClassifier, object, DictConfig]:
    """The checkpoint's model and a set-up datamodule for its data (see ``data_config``), at the
    checkpoint's image size and without augmentation; shared by evaluate, explain and export."""
    ckpt_path = Path(cfg.ckpt_path)
    model = load_classifier(ckpt_path)
    data_cfg = data_config(cfg, ckpt_path)
    check_keys(data_cfg, "data")
    datamodule = instantiate(data_cfg, image_size=model.hparams.image_size, augment=None)
    datamodule.prepare_data()
    datamodule.setup("test")
    return model, datamodule, data_cfg


def evaluate(cfg: DictConfig) -> dict:
    ckpt_path = Path(cfg.ckpt_path)
    model, datamodule, data_cfg = checkpoint_and_data(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if datamodule.class_names != list(model.hparams.class_names):
        raise ConfigError(f"The data's classes {datamodule.class_names} differ from the checkpoint's "
                          f"{list(model.hparams.class_names)}: evaluate on data with the same classes (or data.label_map).")
    write_report(datamodule.report(), output_dir)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    test_metrics, bias = test_and_report(trainer, model, datamodule, output_dir, None, cfg.get("bias"))
    metrics = {"test": {k: float(v) for k, v in test_metrics.items()}, "bias": bias, "checkpoint": str(ckpt_path),
               "data": OmegaConf.to_container(data_cfg, resolve=True)}
    write_metrics(metrics, output_dir)
    log.info("metrics: %s\nrun folder: %s", json.dumps(metrics["test"]), output_dir)
    return metrics


@entry_point("evaluate")
def main(cfg: DictConfig) -> None:
    exit_on_error(check_config, cfg, "evaluate")
    L.seed_everything(cfg.seed)
    exit_on_error(evaluate, cfg)


if __name__ == "__main__":
    main()

"""A trained checkpoint and the data it was trained on, for every command that uses a finished run
(evaluate, explain, export, predict). OmegaConf only: the entry points pass in their command-line overrides,
parsed (maskdet.cli).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from maskdet.errors import ConfigError
from maskdet.models import MaskClassifier
from maskdet.preflight import read_checkpoint

log = logging.getLogger("maskdet.checkpoints")


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


def run_data_config(ckpt_path: str | Path, data_overrides: Mapping[str, Any], fallback: DictConfig) -> DictConfig:
    """The data config of the run that wrote ``ckpt_path`` (``<run>/.hydra/config.yaml``), so the split is
    the one the model was trained with, with this command's ``data.*`` overrides applied on top (already
    parsed: key below ``data`` -> value); ``fallback`` (the command's own ``data``) when the run's config
    is missing. The cache folder is always the command's."""
    run_config = Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"
    if not run_config.is_file():
        log.warning("%s not found: using data settings from the command line and defaults", run_config)
        return fallback
    data = OmegaConf.load(run_config).data
    if data.get("_target_") == "maskdet.data.MaskDataModule":  # written before data layouts were readers
        raise ConfigError(f"{run_config} was written by an older maskdet whose data config this one cannot read "
                          f"(data.source={data.get('source')!r}). Give the data on the command line instead: "
                          "data=<layout> data.root=<folder>, and "
                          f"data.splits_file={run_config.parent.parent / 'splits.csv'} to reuse the run's exact split.")
    OmegaConf.set_struct(data, False)
    for key, value in data_overrides.items():
        OmegaConf.update(data, key, value, force_add=True)
    OmegaConf.update(data, "cache_dir", fallback.cache_dir)
    return data

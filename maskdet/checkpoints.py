"""A trained checkpoint and the data it was trained on, for every command that uses a finished run
(evaluate, explain, export, predict). OmegaConf only: the entry points pass in their command-line overrides,
parsed (maskdet.cli).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from maskdet import runfolder
from maskdet.errors import ConfigError
from maskdet.preflight import read_checkpoint
from maskdet.trust import check_architecture, check_saved_node
from maskdet.writing import one_line

log = logging.getLogger("maskdet.checkpoints")


def load_classifier(ckpt_path: str | Path, trusted_code: Iterable[str] = (), lightning: bool = True):
    """Load a maskdet checkpoint safely (``weights_only``); refuse anything else with a clear message. Its
    hyper-parameters are data: only the known ones are read, and an architecture that names code (a
    family's import path) is built only when the user trusts it (``maskdet.trust``). ``lightning=False``
    gives the network alone (``FaceClassifier``: same weights and outputs, no Lightning import), for predict."""
    checkpoint = read_checkpoint(ckpt_path)
    hparams = checkpoint["hyper_parameters"]
    check_architecture(hparams["architecture"], ckpt_path, trusted_code)
    settings = dict(architecture=hparams["architecture"], class_names=hparams["class_names"],
                    image_size=hparams["image_size"], freeze=hparams.get("freeze", "none"), mean=hparams["mean"],
                    std=hparams["std"])
    if lightning:
        from maskdet.models.module import MaskClassifier

        model = MaskClassifier(num_classes=len(hparams["class_names"]), weights=None, **settings)  # weights: below
    else:
        from maskdet.models.classifier import FaceClassifier

        model = FaceClassifier(**settings)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        first = " ".join([line.strip() for line in str(err).splitlines() if line.strip()][:2]).rstrip(".")
        raise ConfigError(f"ckpt_path={ckpt_path}: its weights do not fit the model its hyper-parameters describe "
                          f"({hparams['architecture']}, {len(hparams['class_names'])} classes, "
                          f"{hparams['image_size']} px): {first}. The file was changed after maskdet.train wrote "
                          "it; use a checkpoint as written by maskdet.train.") from None
    trained_on = (checkpoint.get("maskdet") or {}).get("trained_on") if isinstance(checkpoint.get("maskdet"), dict) else None
    model.trained_on = trained_on if isinstance(trained_on, dict) else None
    return model.eval()


def warn_if_demonstration(model, ckpt_path) -> bool:
    """Warn once when a model trained only on maskdet's embedded drawn faces is used on other images: its
    confident answers on real photographs mean nothing (it has never seen a real face)."""
    trained_on = getattr(model, "trained_on", None) or {}
    if trained_on.get("synthetic") is not True:
        return False
    log.warning("ckpt_path=%s was trained only on maskdet's embedded, procedurally drawn faces (data=synthetic, "
                "%s images): a demonstration model that has never seen a real face, so its answers on real "
                "photographs mean nothing, however confident. Train on real face crops (data=folder "
                "data.root=<folder>) for real use.", one_line(ckpt_path), one_line(trained_on.get("images")))
    return True


def run_data_config(ckpt_path: str | Path, data_overrides: Mapping[str, Any], fallback: DictConfig,
                    trusted: frozenset[str]) -> DictConfig:
    """The data config of the run that wrote ``ckpt_path`` (``<run>/.hydra/config.yaml``), so the split is
    the one the model was trained with, with this command's ``data.*`` overrides applied on top (already
    parsed: key below ``data`` -> value); ``fallback`` (the command's own ``data``) when the run's config
    is missing. The cache folder is always the command's. The saved node is data from a file: every
    ``_target_`` in it must be in ``trusted`` (``maskdet.trust``) before anything is imported."""
    run_config = Path(ckpt_path).resolve().parent.parent / runfolder.CONFIG
    if not run_config.is_file():
        log.warning("%s not found: using data settings from the command line and defaults", run_config)
        return fallback
    try:
        data = OmegaConf.load(run_config).data
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
        raise ConfigError(f"{run_config} cannot be read as the run's settings ({type(err).__name__}: {err}). "
                          "Give the data on the command line instead: data=<layout> data.root=<folder>.") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{run_config} has no data settings (data: {data!r}). Give the data on the command "
                          "line instead: data=<layout> data.root=<folder>.")
    if data.get("_target_") == "maskdet.data.MaskDataModule":  # written before data layouts were readers
        raise ConfigError(f"{run_config} was written by an older maskdet whose data config this one cannot read "
                          f"(data.source={data.get('source')!r}). Give the data on the command line instead: "
                          "data=<layout> data.root=<folder>, and "
                          f"data.splits_file={run_config.parent.parent / runfolder.SPLITS} to reuse the run's exact split.")
    OmegaConf.set_struct(data, False)
    for key, value in data_overrides.items():
        OmegaConf.update(data, key, value, force_add=True)
    check_saved_node(data, run_config, trusted)
    OmegaConf.update(data, "cache_dir", fallback.cache_dir)
    return data

"""Checks of a run's settings that need no data, run first by every entry point.

Each check refuses a wrong setting with a one-paragraph ``ConfigError`` naming the key and what to do,
before any dataset is generated, any cache is written or any file is put in the run folder: a setting
that would fail only after training (a bias option, a checkpoint to resume from) fails here instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from maskdet.config import check_keys, import_target
from maskdet.errors import ConfigError

# What each entry point needs, besides the keys its own config file declares.
NEEDS = {"train": ("data", "model", "trainer"), "evaluate": ("data", "trainer"), "explain": ("data",),
         "export": ("data",), "predict": (), "data_report": ("data",)}
CHECKPOINT_KEYS = {"architecture", "class_names", "image_size", "mean", "std"}


def _required_message(key: str, task: str) -> str:
    if key == "ckpt_path":
        return (f"maskdet.{task} needs a checkpoint: pass ckpt_path=<run>/checkpoints/best.ckpt "
                "(a .ckpt file written by maskdet.train).")
    if key == "input":
        return "maskdet.predict needs images to classify: pass input=<image file | folder | glob such as 'faces/*.jpg'>."
    if key == "data.source":
        layouts = sorted(p.stem for p in (Path(__file__).parent / "conf" / "data").glob("*.yaml") if p.stem != "default")
        return ("data=default is the base shared by the data configs, not a dataset: choose one with "
                f"data={'|'.join(layouts)} (all but synthetic also need data.root=<folder>).")
    return f"{key} has no value (??? in the config): set it on the command line with {key}=<value>."


def _missing(node: DictConfig, prefix: str = ""):
    """Dotted keys whose value is ``???`` (the config's "you must set this")."""
    for key in node:
        full = f"{prefix}{key}"
        if full == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            yield full
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            yield from _missing(node[key], f"{full}.")


def check_required(cfg: DictConfig, task: str) -> None:
    """Refuse a run whose required arguments or config groups are missing."""
    absent = [g for g in NEEDS.get(task, ()) if cfg.get(g) is None]
    if absent:
        raise ConfigError(f"maskdet.{task} needs the config group(s) {', '.join(absent)}, but "
                          f"{' and '.join(f'{g}=null' for g in absent)} removed them: choose an option instead "
                          f"(e.g. {absent[0]}=<option>, see conf/{absent[0]}/).")
    missing = list(_missing(cfg))
    if missing:
        raise ConfigError(" ".join(_required_message(key, task) for key in missing))


def writable_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be created or written (None when it can): tried for real with a temporary
    folder in its nearest existing ancestor, because permission bits lie for root and read-only mounts."""
    probe = Path(folder).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    try:
        Path(tempfile.mkdtemp(prefix=".maskdet-write-test-", dir=probe)).rmdir()
    except OSError as err:
        return f"{probe} cannot be written ({err.strerror or type(err).__name__})"
    return None


def _resolved(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=False)
    except InterpolationResolutionError:
        return None  # e.g. ${hydra:runtime.output_dir} outside a Hydra run, where output_dir is set by hand


def check_writable(cfg: DictConfig) -> None:
    """The run folder and the cache folder must be writable before anything is written into either."""
    output_dir = _resolved(cfg, "paths.output_dir")
    if output_dir:
        problem = writable_problem(output_dir)
        if problem:
            raise ConfigError(f"Cannot write the run folder {output_dir}: {problem}. Write runs elsewhere with "
                              "paths.log_dir=<a writable folder> (or MASKDET_ROOT=<folder>), or "
                              "paths.output_dir=<folder> when calling from Python.")
    data = cfg.get("data")
    if isinstance(data, DictConfig):  # every source writes duplicate fingerprints there, most also decoded images
        cache_dir = _resolved(data, "cache_dir")
        problem = writable_problem(cache_dir) if cache_dir else None
        if problem:
            raise ConfigError(f"Cannot write the cache folder {cache_dir} (generated dataset and decoded images): "
                              f"{problem}. Use a writable one with paths.cache_dir=<folder> "
                              "(or MASKDET_CACHE_DIR=<folder>).")


def check_data_values(data: DictConfig) -> None:
    """Build the data settings without touching any file: ``DataSettings`` checks every value (batch size,
    cap, balance and subset columns ...). The reader and the augmentation are left as they are (their keys
    are checked against their own ``_target_``)."""
    from maskdet.data.prepare import DataSettings

    if import_target(data._target_) is not DataSettings:
        return
    kwargs = OmegaConf.to_container(data, resolve=True)
    kwargs.pop("_target_")
    kwargs.pop("augment", None)
    if isinstance(kwargs.get("source"), dict):  # a reader node; anything else is refused by DataSettings
        kwargs["source"] = _reader_placeholder
    DataSettings(**kwargs)


def _reader_placeholder(root=None):
    """Stands for ``data.source`` while the other data settings are checked."""


def _positive_int(cfg: DictConfig, key: str, where: str = "", why: str = "") -> None:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}{key}={value!r} must be a whole number of at least 1{why}.")


def check_bias_options(bias: DictConfig) -> None:
    """The bias audit's options (``bias.*``, keyword arguments of ``maskdet.evaluation.bias.audit``),
    which the audit would otherwise reject only after training."""
    from maskdet.evaluation.bias import DEFAULT_ATTRIBUTES, audit
    from maskdet.evaluation.metrics import resolve_group_metrics

    check_keys(bias, "bias", audit, skip=("predictions", "class_names"))
    attributes = bias.get("attributes", list(DEFAULT_ATTRIBUTES))
    valid = ", ".join(DEFAULT_ATTRIBUTES)
    if not OmegaConf.is_list(attributes):
        raise ConfigError(f"bias.attributes={attributes!r} must be a list of attributes, e.g. bias.attributes=[gender] "
                          f"(valid: {valid}).")
    unknown = [str(a) for a in attributes if a not in DEFAULT_ATTRIBUTES]
    if unknown:
        raise ConfigError(f"bias.attributes: {', '.join(unknown)} is not an attribute the bias audit knows: "
                          f"use any of {valid} (e.g. bias.attributes=[gender,race]).")
    if "metrics" in bias:
        resolve_group_metrics(list(bias.metrics) if OmegaConf.is_list(bias.metrics) else bias.metrics)
    for key in ("min_group_size", "n_bootstrap"):
        if key in bias:
            _positive_int(bias, key, "bias.", " (the defaults are min_group_size=30, n_bootstrap=1000)")


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """A maskdet checkpoint as a dict, loaded safely (``weights_only``); anything else is refused."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist: pass a .ckpt file from a run's checkpoints/ folder.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors read on use
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
        raise ConfigError(f"ckpt_path={path} is not a readable PyTorch checkpoint ({type(err).__name__}): "
                          "pass a .ckpt file written by maskdet.train.") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not CHECKPOINT_KEYS <= set(hparams) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={path} is not a maskdet checkpoint (no architecture, class names and "
                          "preprocessing in its hyper-parameters): use a checkpoint written by maskdet.train.")
    return checkpoint


def check_resume_checkpoint(cfg: DictConfig) -> None:
    """``ckpt_path`` for train: a maskdet checkpoint of the configured architecture and image size, also
    when it lies outside a run folder (``maskdet.resume.check_resume`` then refuses a weights-only file
    and compares every setting with the run's saved config)."""
    hparams = read_checkpoint(cfg.ckpt_path)["hyper_parameters"]
    differ = [f"{key} {hparams[key]!r} (the config says {where}={value!r})"
              for key, where, value in (("architecture", "model.architecture", cfg.model.get("architecture")),
                                        ("image_size", "data.image_size", cfg.data.get("image_size")))
              if value is not None and hparams[key] != value]
    if differ:
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} was trained with {' and '.join(differ)}: resume with the "
                          "run's own settings (the same model= or +experiment= and data.image_size).")


def check_model(cfg: DictConfig) -> None:
    """Build the network once without weights (cheap next to any data work): an unknown architecture, a
    head its family does not have, or outputs of the wrong shape are refused before the data is read."""
    from maskdet.models.networks import build_network

    model = cfg.get("model")
    if isinstance(model, DictConfig) and isinstance(model.get("architecture"), str):
        build_network(model.architecture, 2, int(cfg.data.get("image_size", 32)), None, "none")


def check_config(cfg: DictConfig, task: str) -> None:
    """Every check that needs no data, for entry point ``task`` (train, evaluate, explain, export, predict)."""
    check_required(cfg, task)
    for group in ("data", "model", "trainer", "callbacks", "logger"):
        if isinstance(cfg.get(group), DictConfig):
            check_keys(cfg[group], group)
    if isinstance(cfg.get("bias"), DictConfig):
        check_bias_options(cfg.bias)
    if isinstance(cfg.get("explain"), DictConfig):
        from maskdet.evaluation.explain import write_explanations

        check_keys(cfg.explain, "explain", write_explanations,
                   skip=("model", "datamodule", "output_dir", "tensorboard", "step"))
    if isinstance(cfg.get("data"), DictConfig):
        check_data_values(cfg.data)
    for key in {"predict": ("batch_size",), "export": ("parity_images",)}.get(task, ()):
        _positive_int(cfg, key)
    check_writable(cfg)
    if task == "train":
        check_model(cfg)
    if task == "train" and cfg.get("ckpt_path"):
        check_resume_checkpoint(cfg)


def preflight_train(cfg: DictConfig) -> None:
    """The checks of ``maskdet.train`` (also when ``train(cfg)`` is called from Python)."""
    check_config(cfg, "train")

"""Checks of a run's settings that need no data, run first by every entry point.

Each check refuses a wrong setting with a one-paragraph ``ConfigError`` naming the key and what to do,
before any dataset is generated, any cache is written or any file is put in the run folder: a setting
that would fail only after training (a bias option, a checkpoint to resume from) fails here instead.
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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
    if key == "data.root":
        return ("data.root is not set: this data layout reads a dataset on disk; pass data.root=<folder> (or "
                "data=synthetic for the embedded dataset; a layout of your own that reads no folder sets root: null "
                "in its YAML).")
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
    if "data.source" in missing and "data.root" in missing:  # data=default: its message names data.root too
        missing.remove("data.root")
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
    from maskdet.data.settings import DataSettings

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


def _options(node: DictConfig, where: str, options_class):
    """Build a settings object from its config node: unknown keys and wrong types are refused by
    ``check_keys``, every value by the object itself (``__post_init__``)."""
    check_keys(node, where, options_class)
    return options_class(**OmegaConf.to_container(node, resolve=True))


def check_bias_options(bias: DictConfig) -> None:
    """The bias audit's options (``bias.*``, ``maskdet.evaluation.options.BiasOptions``), which the audit would
    otherwise reject only after training."""
    from maskdet.evaluation.options import BiasOptions

    _options(bias, "bias", BiasOptions)


def check_comparison_options(comparison: DictConfig) -> None:
    """The options of the comparison a sweep writes when it ends (``comparison.*``,
    ``maskdet.evaluation.options.ComparisonOptions``), which would otherwise be refused after every job ran."""
    from maskdet.evaluation.options import ComparisonOptions

    check_keys(comparison, "comparison", ComparisonOptions)
    try:
        ComparisonOptions(**OmegaConf.to_container(comparison, resolve=True))
    except ConfigError as err:  # its messages name the option as the compare command does: say where it is set
        raise ConfigError(f"comparison.*, the comparison written when a sweep ends: {err}") from None


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """A maskdet checkpoint as a dict, loaded safely (``weights_only``) and checked whole (``checkpoint_problem``);
    anything else is refused, before any model is built or data read."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        if path.is_dir():
            inside = sorted(p.name for p in (path / "checkpoints").glob("*.ckpt")) if (path / "checkpoints").is_dir() else []
            where = f" (its checkpoints/ holds {', '.join(inside)}: pass ckpt_path={path / 'checkpoints' / inside[0]})" \
                if inside else ""
            raise ConfigError(f"ckpt_path={ckpt_path} is a folder, not a checkpoint file{where}: pass a .ckpt file "
                              "such as <run>/checkpoints/best.ckpt.")
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist: pass a .ckpt file from a run's checkpoints/ folder.")
    import torch  # here, not above: refusals of settings answer without loading PyTorch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors read on use
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
        raise ConfigError(f"ckpt_path={path} is not a readable PyTorch checkpoint ({type(err).__name__}): "
                          "pass a .ckpt file written by maskdet.train.") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not CHECKPOINT_KEYS <= set(hparams) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={path} is not a maskdet checkpoint (no architecture, class names and "
                          "preprocessing in its hyper-parameters): use a checkpoint written by maskdet.train.")
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise ConfigError(f"ckpt_path={path} contradicts itself: {problem}. The file was changed after maskdet.train "
                          "wrote it (or was written by something else); use a checkpoint as maskdet.train wrote it.")
    return checkpoint


def _shown(values, limit: int = 8) -> str:
    """Values read from a file, short and on one line (``repr`` escapes newlines)."""
    shown = [repr(v)[:40] for v in list(values)[:limit]]
    return "[" + ", ".join(shown) + (", ..." if len(values) > limit else "") + "]"


def output_count(checkpoint: dict) -> int | None:
    """How many outputs the saved network has: the first dimension of the last weight or bias of its head
    (``maskdet.head``, saved by MaskClassifier; older files: of the whole network, whose head comes last in
    every backbone family); None when the state dict has no such tensor."""
    import torch

    head = (checkpoint.get("maskdet") or {}).get("head") if isinstance(checkpoint.get("maskdet"), dict) else None
    prefix = f"net.{head}." if isinstance(head, str) and head else "net."
    state = checkpoint["state_dict"] if isinstance(checkpoint["state_dict"], dict) else {}
    last = [t for k, t in state.items() if isinstance(k, str) and k.startswith(prefix)
            and k.endswith((".weight", ".bias")) and isinstance(t, torch.Tensor) and t.dim() >= 1]
    return int(last[-1].shape[0]) if last else None


def checkpoint_problem(checkpoint: dict) -> str | None:
    """What contradicts itself in a checkpoint's preprocessing and classes (None when nothing does): class
    names must be at least two distinct strings, one per output of the network, so that no probability
    column is dropped or doubled; the image size a whole number; mean and std three numbers each."""
    hparams = checkpoint["hyper_parameters"]
    names = hparams["class_names"]
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n.strip() for n in names):
        return f"class_names={_shown(names) if isinstance(names, list | tuple) else repr(names)[:80]} must be a " \
               "list of non-empty strings"
    if len(names) < 2:
        return f"class_names={_shown(names)} names {len(names)} class; a classifier needs at least two"
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        return f"class_names={_shown(names)} names {_shown(doubled)} more than once; each class needs its own name"
    outputs = output_count(checkpoint)
    if outputs is None:
        return "its state_dict has no output layer (no net.*.weight or net.*.bias tensor)"
    declared = hparams.get("num_classes", len(names))
    if outputs != len(names) or declared != len(names):
        return (f"class_names has {len(names)} names {_shown(names)} but the network has {outputs} outputs"
                + (f" and num_classes={declared!r}" if declared != len(names) else "")
                + "; there must be exactly one name per output")
    size = hparams["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return f"image_size={size!r} must be a whole number of pixels of at least 1"
    for key in ("mean", "std"):
        problem = three_numbers(hparams[key], positive=key == "std")
        if problem:
            return f"{key}={repr(hparams[key])[:80]} must be {problem}"
    from maskdet.models.calibration import calibration_problem

    return calibration_problem(checkpoint)


def check_robustness_options(robustness: DictConfig) -> None:
    """``robustness.*`` of evaluate (``maskdet.evaluation.robustness``): keys and values, before any work."""
    from maskdet.evaluation.robustness import check_options, robustness_report

    settings = OmegaConf.masked_copy(robustness, [k for k in robustness if k != "enabled"])
    check_keys(settings, "robustness", robustness_report, skip=("model", "datamodule", "device", "split"))
    enabled = robustness.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"robustness.enabled={enabled!r} must be true or false.")
    check_options(**{k: robustness[k] for k in ("corruptions", "severities", "attributes", "n_bootstrap",
                                                "min_group_size", "alpha") if k in robustness})


def three_numbers(values, positive: bool = False) -> str | None:
    """None when ``values`` is three finite numbers (above 0 if ``positive``: a std divides); else what it
    must be."""
    wanted = "three finite numbers" + (" above 0" if positive else "") + " (one per colour channel, R G B)"
    if OmegaConf.is_list(values):
        values = list(values)
    if not isinstance(values, list | tuple) or len(values) != 3:
        return wanted
    if not all(_is_number(v) and math.isfinite(v) and (v > 0 or not positive) for v in values):
        return wanted
    return None


# ------------------------------------------------------------------------------------------ numbers
def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Accepts(NamedTuple):
    """What a numeric setting accepts: ``test(value)``, and the words for it in a refusal."""

    test: Callable[[object], bool]
    words: str


def _whole(least: int, most: int | None = None, null: str = "", note: str = "") -> Accepts:
    words = f"a whole number of at least {least}" + (f" and at most {most}" if most is not None else "") + note
    return Accepts(lambda v: (v is None and bool(null)) or (_is_whole(v) and v >= least and (most is None or v <= most)),
                   words + (f", or null ({null})" if null else ""))


def _number(above: float | None = None, least: float | None = None, most: float | None = None,
            below: float | None = None, finite: bool = True, null: str = "", note: str = "") -> Accepts:
    bounds = [f"above {above}" if above is not None else f"of at least {least}" if least is not None else "",
              f"below {below}" if below is not None else f"at most {most}" if most is not None else ""]
    words = f"a {'finite ' if finite else ''}number {' and '.join(b for b in bounds if b)}{note}"

    def test(v) -> bool:
        if v is None:
            return bool(null)
        return _is_number(v) and not math.isnan(v) and (math.isfinite(v) or not finite) \
            and (above is None or v > above) and (least is None or v >= least) \
            and (most is None or v <= most) and (below is None or v < below)

    return Accepts(test, words + (f", or null ({null})" if null else ""))


def _batches(v) -> bool:  # Lightning's limit_*_batches: a count, or a fraction of the batches
    return v is None or (_is_whole(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


LIMIT_BATCHES = Accepts(_batches, "a whole number of batches of at least 0, a fraction of them from 0.0 to 1.0, "
                                  "or null (all), as in Lightning")
SEED = _whole(0, 2**32 - 1, note=" (the range numpy and Lightning accept)")
DEVICES = Accepts(lambda v: not _is_number(v) or (_is_whole(v) and (v == -1 or v >= 1)),
                  "a number of devices of at least 1, -1 (all), auto, or a list of device indices, as in Lightning")
FAST_DEV_RUN = Accepts(lambda v: isinstance(v, bool) or (_is_whole(v) and v >= 0),
                       "true, false, or a whole number of batches of at least 0, as in Lightning")
PER_CLASS = Accepts(lambda v: (_is_whole(v) and v >= 1) or (OmegaConf.is_list(v) and len(v) > 0
                                                            and all(_is_whole(c) and c >= 1 for c in v)),
                    "a whole number of images of at least 1, or a list of them, one per class")

# Each numeric setting of the shipped configs (and Lightning's Trainer) with what it accepts, checked by
# check_numbers before any data work. Lightning's conventions hold: -1 means "no limit" where Lightning says so.
NUMBERS: dict[str, Accepts] = {
    "seed": SEED, "data.seed": SEED, "data.source.seed": SEED, "bias.seed": SEED, "robustness.seed": SEED,
    "data.source.per_class": PER_CLASS,
    "data.source.size": _whole(32, note=" (pixels of the generated images)"),
    "data.source.bias.strength": _number(least=0, most=1, note=" (0: off, 1: strongest)"),
    "model.optimizer.lr": _number(above=0, note=" (the learning rate, e.g. 0.001)"),
    "model.optimizer.weight_decay": _number(least=0),
    "model.optimizer.momentum": _number(least=0),
    "model.optimizer.eps": _number(least=0),
    "trainer.max_epochs": _whole(-1, null="Lightning's default", note=" (-1: no epoch limit, as in Lightning)"),
    "trainer.min_epochs": _whole(0, null="no minimum"),
    "trainer.max_steps": _whole(-1, note=" (-1: no step limit, as in Lightning)"),
    "trainer.min_steps": _whole(0, null="no minimum"),
    "trainer.log_every_n_steps": _whole(0, note=" (0: no logging within an epoch)"),
    "trainer.check_val_every_n_epoch": _whole(1, null="validate by trainer.val_check_interval only"),
    "trainer.num_sanity_val_steps": _whole(-1, note=" (-1: the whole validation set, as in Lightning)"),
    "trainer.accumulate_grad_batches": _whole(1),
    "trainer.gradient_clip_val": _number(least=0, null="no clipping"),
    "trainer.limit_train_batches": LIMIT_BATCHES, "trainer.limit_val_batches": LIMIT_BATCHES,
    "trainer.limit_test_batches": LIMIT_BATCHES, "trainer.limit_predict_batches": LIMIT_BATCHES,
    "trainer.val_check_interval": Accepts(lambda v: v is None or (_is_whole(v) and v >= 1)
                                          or (isinstance(v, float) and 0.0 < v <= 1.0),
                                          "a whole number of batches of at least 1, a fraction of an epoch above 0.0 "
                                          "and at most 1.0, or null (once per epoch), as in Lightning"),
    "trainer.num_nodes": _whole(1),
    "trainer.devices": DEVICES,
    "trainer.fast_dev_run": FAST_DEV_RUN,
    "every_n_frames": _whole(1, note=" (1: every frame of a video)"),
    "abstain.threshold": _number(least=0, most=1, null="always answer", note=" (a confidence)"),
    "abstain.target_error": _number(above=0, below=1, null="no threshold from the validation split"),
    "max_abs_diff": _number(least=0),
    "detector.scale_factor": _number(above=1),
    "detector.min_neighbors": _whole(0),
    "detector.min_size": _whole(1, note=" (pixels)"),
    "detector.margin": _number(least=0),
    "detector.score_threshold": _number(least=0, most=1),
    "detector.nms_threshold": _number(least=0, most=1),
    "detector.top_k": _whole(1),
    "detector.min_face": _whole(0, note=" (pixels; 0: the whole frame only, no tiles)"),
    "detector.verify_below": _number(least=0, most=1, note=" (boxes scoring below it get a second look; 0: none)"),
    "detector.verify_score": _number(above=0, below=1),
    "detector.verify_score_small": _number(above=0, below=1),
    "scenes.iou": _number(above=0, most=1),
    "scenes.gallery_size": _whole(0),
}
# Settings named alike mean the same in every callback (callbacks.<name>.*), scheduler (model.scheduler.*)
# and in the explanations (explain.*): Lightning's EarlyStopping and ModelCheckpoint, torch's schedulers.
LEAVES: dict[str, Accepts] = {
    "max_loss": _number(above=0, finite=False, note=" (the divergence limit on a batch's training loss)"),
    "patience": _whole(0), "min_delta": _number(least=0),
    "save_top_k": _whole(-1, note=" (-1: keep every checkpoint, as in Lightning)"),
    "every_n_epochs": _whole(0, null="Lightning's default"),
    "every_n_train_steps": _whole(0, null="Lightning's default"),
    "per_class": _whole(1), "gallery_size": _whole(1), "low_confidence": _number(least=0, most=1),
    "target_error": _number(above=0, below=1, note=" (an error rate)"),
    "step_size": _whole(1), "T_max": _whole(1), "gamma": _number(above=0),
    "factor": _number(above=0, below=1), "eta_min": _number(least=0), "min_lr": _number(least=0),
}
LEAF_NODES = ("callbacks", "explain", "model.scheduler")
_ABSENT = object()


def _select(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except InterpolationResolutionError:
        return _ABSENT  # checked by whatever resolves it later


def _leaf_keys(cfg: DictConfig, prefix: str):
    node = _select(cfg, prefix)
    if not isinstance(node, DictConfig):
        return
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            yield from _leaf_keys(cfg, f"{prefix}.{key}")
        elif key in LEAVES:
            yield f"{prefix}.{key}", LEAVES[key]


def check_numbers(cfg: DictConfig) -> None:
    """Refuse a numeric setting outside what it accepts (``NUMBERS``, ``LEAVES``; model.mean and model.std
    three numbers) with one paragraph naming the key, its value and what is accepted: a learning rate of -1
    or a frame step of 1.5 would otherwise fail after the data work, or be silently rounded."""
    checks = [(key, accepts) for key, accepts in NUMBERS.items()]
    checks += [found for prefix in LEAF_NODES for found in _leaf_keys(cfg, prefix) if found[0] not in NUMBERS]
    for key, accepts in checks:
        value = _select(cfg, key)
        if value is not _ABSENT and not accepts.test(value):
            raise ConfigError(f"{key}={value!r} is not accepted: it must be {accepts.words}.")
    for key in ("model.mean", "model.std"):
        value = _select(cfg, key)
        problem = None if value is _ABSENT or value is None else three_numbers(value, positive=key == "model.std")
        if problem:
            raise ConfigError(f"{key}={value!r} is not accepted: it must be {problem}, or null (the weights' own).")


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


# What each optional logger imports, and the extra that installs it: named before any work starts (Lightning
# raises only at the logger's first call, and MLflow's own error for a SQLite store without SQLAlchemy names
# neither the package nor the extra).
LOGGER_EXTRAS = {"MLFlowLogger": ("mlflow", "track"), "WandbLogger": ("wandb", "track")}


def check_logger_extras(loggers: DictConfig) -> None:
    for name, node in loggers.items():
        target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
        module, extra = LOGGER_EXTRAS.get(target.rpartition(".")[2], (None, None))
        if module is None:
            continue
        missing = [m for m in (module,) if importlib.util.find_spec(m) is None]
        if module == "mlflow" and str(node.get("tracking_uri") or "").startswith("sqlite:"):
            # the local store needs what the full mlflow package brings (mlflow-skinny lacks it)
            missing += [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            full = " (the full mlflow package, not mlflow-skinny)" if module == "mlflow" else ""
            raise ConfigError(f"logger.{name} ({target}) needs {', '.join(missing)}, which this environment lacks: "
                              f"pip install 'maskdet[{extra}]'{full}, or leave this logger out (~logger.{name}).")


def check_settings(cfg: DictConfig, task: str) -> None:
    """The checks of maskdet's own settings for entry point ``task``: each settings object (data, bias,
    comparison) checks itself, plus the required keys, the numbers and the folders. Nothing heavy is
    imported (no Lightning, torch, pandas or matplotlib), so an entry point runs these before its imports
    and a wrong value is refused in about a second."""
    check_required(cfg, task)
    # bias and comparison first: callbacks interpolate them (${bias.alpha}), and a bad value is named where set
    if isinstance(cfg.get("bias"), DictConfig):
        check_bias_options(cfg.bias)
    if isinstance(cfg.get("comparison"), DictConfig):
        check_comparison_options(cfg.comparison)
    if isinstance(cfg.get("data"), DictConfig):  # the reader's keys (data.source.*) are checked by check_config
        check_keys(OmegaConf.masked_copy(cfg.data, [k for k in cfg.data if k not in ("source", "augment")]), "data")
        check_data_values(cfg.data)
    for key in {"predict": ("batch_size",), "export": ("parity_images",)}.get(task, ()):
        _positive_int(cfg, key)
    check_numbers(cfg)
    check_writable(cfg)


def check_config(cfg: DictConfig, task: str) -> None:
    """Every check that needs no data, for entry point ``task`` (train, evaluate, explain, export, predict):
    ``check_settings``, then the keys of every ``_target_`` against its signature (this imports Lightning,
    the model and the third-party classes), the model and the checkpoint."""
    check_settings(cfg, task)
    if isinstance(cfg.get("robustness"), DictConfig):
        check_robustness_options(cfg.robustness)
    for group in ("data", "model", "trainer", "callbacks", "logger"):
        if isinstance(cfg.get(group), DictConfig):
            check_keys(cfg[group], group)
    scenes = cfg.get("scenes") if isinstance(cfg.get("scenes"), DictConfig) else {}
    if isinstance(cfg.get("detector"), DictConfig) and (cfg.get("detect") or scenes.get("enabled")):
        check_keys(cfg.detector, "detector")  # only where a detector will be built
    if isinstance(cfg.get("logger"), DictConfig):
        check_logger_extras(cfg.logger)
    if isinstance(cfg.get("explain"), DictConfig):
        from maskdet.evaluation.explain import write_explanations

        check_keys(cfg.explain, "explain", write_explanations,
                   skip=("model", "datamodule", "output_dir", "tensorboard", "step"))
    if task == "train":
        check_model(cfg)
    if task == "train" and cfg.get("ckpt_path"):
        check_resume_checkpoint(cfg)
    elif task in ("evaluate", "explain", "export", "predict"):
        read_checkpoint(cfg.ckpt_path)  # checked whole before any detector, model or data is built


def preflight_train(cfg: DictConfig) -> None:
    """The checks of ``maskdet.train`` (also when ``train(cfg)`` is called from Python)."""
    check_config(cfg, "train")

"""Hydra glue shared by the entry points (train, evaluate, predict, export, explain).

``entry_point`` is ``hydra.main`` plus two things Hydra does not do: ``group=null`` on the command line
removes that config group (``logger=null``: no logger) instead of crashing, and a config that does not
compose (an unknown option ``model=resnet19``, a key that moved, a misspelt key ``data.batchsize=64``) gets
one maskdet message with the closest valid names instead of Hydra's block.
``RunFolderCheck`` refuses an unwritable run folder before Hydra tries to create it, and a folder that
holds another run before Hydra writes into it (``maskdet.runfolder``).
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from maskdet.console import route_third_party_output
from maskdet.preflight import writable_problem


def _null_groups_removed(argv: list[str], config_dir: Path) -> list[str]:
    """``group=null`` -> ``~group`` for config groups (Hydra accepts null for a group only in a defaults
    list; on the command line it stops with a ValueError traceback)."""
    groups = {p.name for p in config_dir.iterdir() if p.is_dir()}
    out = []
    for arg in argv:
        try:
            (override,) = parse_overrides([arg])
        except HydraException:  # an option (-m, --config-name) or its value: not an override
            out.append(arg)
            continue
        null_group = override.type == OverrideType.CHANGE and override.key_or_group in groups \
            and not override.is_sweep_override() and override.value() is None
        out.append(f"~{override.key_or_group}" if null_group else arg)
    return out


def _dotted_keys(node: DictConfig, prefix: str = ""):
    for key in node:
        full = f"{prefix}{key}"
        if full == "hydra" or str(key).startswith("_"):  # Hydra's own settings, _target_ and the like
            continue
        yield full
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() \
                and not child._is_interpolation():
            yield from _dotted_keys(child, f"{full}.")


def _composition_error(config_dir: Path, config_name: str, overrides: list[str], mode: RunMode):
    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            GlobalHydra.instance().hydra.compose_config(config_name, overrides, run_mode=mode)
    except ConfigCompositionException as err:
        return err
    finally:
        GlobalHydra.instance().clear()
    return None


def parse_overrides(overrides: Iterable[str]) -> list[Override]:
    """Override strings as Hydra itself reads them: key (``key_or_group``), value (``value()``), ``+``/``~``,
    sweeps. maskdet's one reading of overrides; library modules are handed the parsed keys and values."""
    return OverridesParser.create().parse_overrides([str(o) for o in overrides])


def _first_of_each_sweep(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each sweep replaced by its first value: a key misspelt inside a sweep
    fails only in the jobs, so the hint composes one job's config."""
    return [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
            for o in parse_overrides(overrides)]


# Keys that moved: old prefix -> new prefix, so a command written for an older maskdet gets the new name.
MOVED_KEYS = {"data.synthetic": "data.source", "data.layout": "data.source", "data.manifest": "data.source.manifest",
              "data.per_class": "data.source.per_class"}


def _closest_keys(full_key: str, keys: list[str]) -> list[str]:
    close = difflib.get_close_matches(full_key, keys, n=3, cutoff=0.75)
    if not close:  # a right name under the wrong parent (batch_size=64 for data.batch_size=64)
        leaf = full_key.rpartition(".")[2]
        by_leaf = {k.rpartition(".")[2]: k for k in keys}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.75)]
    return close


def _describe(err: ConfigCompositionException, value_of: dict[str, str]) -> str | None:
    """One maskdet paragraph for a composition error: an unknown group option with the closest ones and
    all options, a key that moved, or a misspelt key with the closest valid keys; None for anything else."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        options = sorted(err.options or [])
        close = difflib.get_close_matches(option, options, n=2, cutoff=0.6)
        plus = "+" if f"+{group}" in value_of else ""
        guess = f"; did you mean {' or '.join(f'{plus}{group}={c}' for c in close)}?" if close else "."
        return (f"There is no {group} option {option!r}{guess} Options: {', '.join(options) or 'none'} (maskdet/conf/"
                f"{group}/, plus any {group}/ folder in your --config-dir).")
    missing = err.__cause__
    full_key, parent = getattr(missing, "full_key", None), getattr(missing, "parent_node", None)
    if not full_key or not isinstance(parent, DictConfig):
        return None
    # Hydra names the first missing node (data.synthetic); the user typed the whole key (data.synthetic.per_class)
    typed = [k.lstrip("+~") for k in value_of if k.lstrip("+~") == full_key or k.lstrip("+~").startswith(full_key + ".")]
    full_key = typed[0] if typed else full_key
    value = next((v for k, v in value_of.items() if k.lstrip("+~") == full_key), None)
    assignment = "" if value is None else f"={value}"
    for old, new in MOVED_KEYS.items():
        if full_key == old or full_key.startswith(old + "."):
            moved = new + full_key[len(old):]
            return (f"{full_key} is now {moved} ({old}.* moved to {new}.*): pass {moved}{assignment} instead.")
    close = _closest_keys(full_key, list(_dotted_keys(parent._get_root())))
    if close:
        return f"Unknown config key {full_key}. Did you mean {' or '.join(close)}?"
    return (f"Unknown config key {full_key}: no such setting in maskdet's config. To add a key of your own on "
            f"purpose, write +{full_key}{assignment}.")


def composition_problem(config_dir: Path, config_name: str, argv: list[str]) -> str | None:
    """What is wrong with a command line's config, as one maskdet message (None when it composes, or when
    the problem is Hydra's to report). Composed before Hydra runs, so the user sees one message and
    no Hydra block; a multirun is checked with each sweep's first value (a key misspelt inside a sweep
    would otherwise fail only in the jobs)."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    try:
        args, _ = get_args_parser().parse_known_args(argv)
        if args.help or args.hydra_help or args.info is not None or args.shell_completion:
            return None
        name = args.config_name or config_name
        # a user's --config-dir (their own group options) joins the search path, as hydra.main does
        user = [f"hydra.searchpath=[file://{Path(args.config_dir).absolute()}]"] if args.config_dir else []
        overrides = user + (_first_of_each_sweep(args.overrides) if args.multirun else args.overrides)
        err = _composition_error(config_dir, name, overrides, RunMode.RUN)
        if err is None:
            return None
        value_of = {o.input_line.partition("=")[0]: o.input_line.partition("=")[2] for o in parse_overrides(args.overrides)}
        return _describe(err, value_of)
    except Exception:  # noqa: BLE001 - a hint is a courtesy: never let it hide Hydra's own message
        return None


def key_hint(config_dir: Path, config_name: str, argv: list[str]) -> str | None:
    """"Did you mean ...?" for an override of a key that does not exist (see ``composition_problem``)."""
    problem = composition_problem(config_dir, config_name, argv)
    return problem[problem.index("Did you mean"):] if problem and "Did you mean" in problem else None


def entry_point(config_name: str, config_path: str = "conf"):
    """Decorator for an entry point's ``main(cfg)``, used instead of ``hydra.main``."""

    def decorate(task):
        @functools.wraps(task)
        def task_with_console(cfg: DictConfig):
            route_third_party_output()  # after Hydra has set up logging (see maskdet.console)
            return task(cfg)

        hydra_main = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(task_with_console)
        config_dir = (Path(inspect.getfile(task)).parent / config_path).resolve()

        @functools.wraps(task)
        def main(cfg: DictConfig | None = None):
            if cfg is not None:  # called with a composed config, as hydra.main allows
                return hydra_main(cfg)
            sys.argv[1:] = _null_groups_removed(sys.argv[1:], config_dir)
            problem = composition_problem(config_dir, config_name, sys.argv[1:])
            if problem:  # one maskdet message instead of Hydra's block
                print(f"\nmaskdet: {problem}", file=sys.stderr)
                sys.exit(1)
            return hydra_main()

        main.maskdet_entry_point = True
        return main

    return decorate


class RunFolderCheck(Callback):
    """Refuse an unwritable run (or sweep) folder with a message, before Hydra creates it: Hydra's own
    attempt ends in an ``OSError`` traceback."""

    def _check(self, config: DictConfig, key: str) -> None:
        try:  # a copy, so the folder name (timestamp, random suffix) is resolved only once, by Hydra
            folder = str(copy.deepcopy(config).hydra[key].dir)
        except Exception:  # noqa: BLE001 - a folder that cannot be resolved here is Hydra's to report
            return
        problem = writable_problem(folder)
        if problem:
            print(f"\nmaskdet: Cannot create the run folder {folder}: {problem}. Write runs elsewhere with "
                  "paths.log_dir=<a writable folder> (or MASKDET_ROOT=<folder>).", file=sys.stderr)
            sys.exit(1)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "run")
        self._own_folder(config)

    @staticmethod
    def _own_folder(config: DictConfig) -> None:
        """A run folder belongs to its run: a command whose folder already holds one is refused here,
        before Hydra writes its config and opens its log there. The one exception is train resuming that
        run (``hydra.output_subdir`` null, see maskdet.resume), which is checked for symlinks instead."""
        from maskdet import runfolder
        from maskdet.errors import ConfigError

        if os.environ.get("LOCAL_RANK", "0") != "0":  # a DDP process Lightning started inside rank 0's own run
            return
        try:
            resolved = copy.deepcopy(config)
            folder, subdir = Path(str(resolved.hydra.run.dir)), resolved.hydra.output_subdir
            resuming = subdir is None and runfolder.run_of_checkpoint(resolved.get("ckpt_path")) == folder.resolve()
        except Exception:  # noqa: BLE001 - a folder that cannot be resolved here is Hydra's to report
            return
        try:
            if resuming:
                runfolder.refuse_links(folder)
            else:
                runfolder.refuse_existing_run(folder, str(resolved.hydra.job.name or "command"))
        except ConfigError as err:
            print(f"\nmaskdet: {err}", file=sys.stderr)
            sys.exit(1)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, "sweep")


def data_changes(overrides: Iterable[str]) -> dict | None:
    """A command's ``data.*`` overrides, parsed, as key below ``data`` -> value (``~data.key``: None, the run's
    saved config being a plain dict); None after ``data=<source>``, which replaces the data config."""
    data = [o for o in parse_overrides(overrides) if o.key_or_group.split(".")[0] == "data"]
    if any(o.key_or_group == "data" for o in data):
        return None
    return {o.key_or_group.removeprefix("data."): None if o.is_delete() else o.value() for o in data}


def checkpoint_and_data(cfg: DictConfig):
    """The checkpoint's model and a set-up datamodule for the data it was trained on (the run's own data
    config with this command's ``data.*`` overrides, see ``checkpoints.run_data_config``; this command's
    data config after ``data=<source>``), at the checkpoint's image size and without augmentation; shared
    by evaluate, explain and export."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from maskdet import runfolder
    from maskdet.checkpoints import load_classifier, run_data_config
    from maskdet.config import check_keys
    from maskdet.data.datamodule import MaskDataModule
    from maskdet.trust import trusted_names

    task = HydraConfig.get().overrides.task if HydraConfig.initialized() else []  # [] when called from Python
    # from Python too (the CLI refused this already, in RunFolderCheck): results go to a folder of their own
    runfolder.refuse_existing_run(Path(cfg.paths.output_dir), HydraConfig.get().job.name if HydraConfig.initialized()
                                  else "evaluate/explain/export", own_config=True)
    trusted_code = list(cfg.get("trusted_code") or [])
    model = load_classifier(cfg.ckpt_path, trusted_code)
    changes = data_changes(task)
    data_cfg = cfg.data if changes is None else \
        run_data_config(cfg.ckpt_path, changes, cfg.data, trusted_names(cfg, trusted_code))
    check_keys(data_cfg, "data")
    datamodule = MaskDataModule(instantiate(data_cfg, image_size=model.hparams.image_size, augment=None))
    datamodule.setup("test")
    return model, datamodule, data_cfg

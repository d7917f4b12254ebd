"""Hydra side of a multirun: sweep job folders named by what varies, and the summary when it ends."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from maskdet.cli import parse_overrides
from maskdet.data.settings import FOLD_KEY
from maskdet.errors import MaskdetError
from maskdet.writing import file_name_part

log = logging.getLogger("maskdet.sweep")
NAME_LIMIT = 80  # characters after the job number: folder names stay short on every file system


def _swept_keys(sweeper_params, argv) -> set[str]:
    """Keys the sweep varies: the sweeper's ``params`` (experiments, Optuna) and the command line's sweep
    overrides (``lr=1e-3,1e-2``, ``range(3)``)."""
    keys = {o.key_or_group for o in parse_overrides(f"{k}={v}" for k, v in (sweeper_params or {}).items())}
    words = [w for w in argv if "=" in w and not w.startswith("-")]
    try:
        keys |= {o.key_or_group for o in parse_overrides(words) if o.is_sweep_override()}
    except HydraException:  # not Hydra overrides (a launcher's worker process): use the sweeper's params
        pass
    return keys


def job_name(num, overrides, sweeper_params=None, argv=None) -> str:
    """``${job_name:...}`` in conf/hydra: a sweep job's folder name, its number then the overrides the sweep
    varies as ``key-value`` joined by ``+``, fold last (``3_lr-0.01+fold-1``), so folders and TensorBoard
    runs say what differs. Where the swept keys cannot be told (a launcher's worker process), every
    override of the job that is not a path.

    The name uses only letters, digits and ``. _ - +``: Hydra's override grammar and the shell both take
    these unquoted, so ``ckpt_path=<sweep>/3_lr-0.01+fold-1/checkpoints/best.ckpt`` pastes as it is
    (``=`` and ``,`` would need quoting). Override values are text anyone can write, so every other
    character (``/``, newlines, brackets, spaces) becomes ``_``; the job number keeps names unique."""
    pairs = [(o.key_or_group, o.get_value_string()) for o in parse_overrides(overrides or []) if not o.is_delete()]
    swept = _swept_keys(sweeper_params, sys.argv[1:] if argv is None else argv)
    chosen = [(k, v) for k, v in pairs if k in swept] if swept else \
        [(k, v) for k, v in pairs if "/" not in v and not k.startswith(("paths.", "hydra."))]
    chosen.sort(key=lambda kv: kv[0] == FOLD_KEY)  # stable: command-line order, the fold last
    short = [k.rsplit(".", 1)[-1] for k, _ in chosen]
    words = [f"{file_name_part(s if short.count(s) == 1 else k)}-{file_name_part(v)}" for s, (k, v) in zip(short, chosen)]
    name = "+".join(words)[:NAME_LIMIT].rstrip("+")
    return f"{num}_{name}" if name else str(num)


# Registered on import: Hydra imports this module to build its callbacks (conf/hydra/default.yaml) before
# it names any job folder, in the sweep's process and in a launcher's workers (which unpickle them).
if not OmegaConf.has_resolver("job_name"):
    OmegaConf.register_new_resolver("job_name", job_name)


class SweepSummary(Callback):
    """Write cv_summary.csv / .md, the likely label errors of a k-fold sweep (label_issues.csv/.md/.png) and
    the comparison of configurations (comparison.md/.csv/.json/.png) in the sweep folder, with a TensorBoard text + scalars and the HParams config of all the sweep's runs; end
    the console with the best configurations in a few lines and where the full summary is (all of it with
    verbose=true); exit non-zero after writing them if any job failed, so a failure is neither silent nor a
    reason to lose the others."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        from maskdet.evaluation.cv import console_summary, write_summary  # pandas: only when a sweep ends

        try:
            runs, summary = write_summary(sweep_dir)
        except MaskdetError as err:  # a job folder that cannot be read (a hand-edited overrides.yaml): said, exit 1
            print(f"\nmaskdet: no sweep summary for {sweep_dir}: {err}", file=sys.stderr)
            sys.exit(1)
        markdown = (sweep_dir / "cv_summary.md").read_text()
        if runs.loc[runs["status"] == "ok", "fold"].nunique() >= 2:  # a k-fold sweep: every image was held out once
            from maskdet.evaluation.label_issues import write_label_issues

            try:
                write_label_issues(sweep_dir, image_roots=_own_data_folders(config))
            except MaskdetError as err:  # e.g. trained with callbacks.calibration=null: said, the sweep goes on
                log.warning("no label issues for %s: %s", sweep_dir, err)
        from maskdet.evaluation.compare import write_comparison  # scipy/matplotlib: only when a sweep ends

        try:
            options = OmegaConf.to_container(config.comparison) if "comparison" in config else {}
            write_comparison([sweep_dir], sweep_dir, **options)  # the sweep's comparison.* (conf/comparison)
            comparison = (sweep_dir / "comparison.md").read_text()
        except MaskdetError as err:  # e.g. every job failed, or none was tested: said, not hidden
            comparison = f"No comparison: {err}"
            log.warning("%s", comparison)
        from torch.utils.tensorboard import SummaryWriter

        from maskdet.loggers import write_sweep_hparams

        with SummaryWriter(str(sweep_dir / "tensorboard")) as writer:
            writer.add_text("cv_summary", markdown)
            writer.add_text("comparison", comparison)
            for rank, row in summary.iterrows():
                for metric in ("val/acc_best", "test/acc", "test/f1"):
                    writer.add_scalar(f"cv_{metric} mean", row[f"{metric} mean"], global_step=rank)
            try:  # HParams: the settings that differ across the sweep's runs first; failed jobs marked failed
                write_sweep_hparams(sweep_dir, writer, runs)
            except Exception as err:  # noqa: BLE001 - the dashboard's layout must not cost the sweep its summary
                log.warning("no HParams config for the sweep's TensorBoard: %s", err)
        if config.get("verbose"):
            print(f"\n{comparison}\n{markdown}")
        print("\n" + console_summary(runs, summary, sweep_dir))
        failed = runs[runs["status"] == "failed"]
        if len(failed):
            print(f"\nmaskdet: {len(failed)} of {len(runs)} sweep jobs failed; see {sweep_dir / 'cv_summary.md'}",
                  file=sys.stderr)
            sys.exit(1)


class LeakageStudy(Callback):
    """``+experiment=leakage_study``: write leakage_study.md (image-level vs grouped split) in the sweep folder.
    Hydra calls multirun-end callbacks last-added first, so this runs before SweepSummary may exit non-zero."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from maskdet.evaluation.leakage import write_leakage_study

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            text = write_leakage_study(sweep_dir)
        except MaskdetError as err:  # jobs failed: SweepSummary reports them and exits non-zero
            log.error("no leakage study: %s", err)
            return
        log.info("leakage study: %s\n%s", sweep_dir / "leakage_study.md", text)
        print(text)


def _own_data_folders(config: DictConfig) -> list[str]:
    """The folders this sweep's own configuration read images from (``data.root``, and the cache that holds
    generated images and scene crops): the only places its label-issue search reads images from (the face
    probabilities of its outlier score, and the gallery)."""
    folders = []
    for key in ("data.root", "data.cache_dir"):
        try:
            value = OmegaConf.select(config, key, default=None)
        except Exception:  # noqa: BLE001 - a key that does not resolve names no folder
            value = None
        if isinstance(value, str) and value:
            folders.append(value)
    return folders


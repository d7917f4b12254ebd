"""TensorBoard laid out as a researcher reads it: curves first, settings that differ first, failures marked.

``logger=tensorboard`` is this module's ``TensorBoardLogger``: Lightning's, with four differences, all in
TensorBoard only (``metrics.json``, CSV, MLflow and W&B keep every name and step as they are):

- **Sections in reading order.** TensorBoard groups cards by a tag's first segment, sorts the groups (names
  starting with digits first) and opens the first two. The run's sections get numbered prefixes
  (``SECTIONS``): ``train/loss`` is ``1_train/loss``, then ``2_val/*``, ``3_test/*``, ``4_final/*``;
  ``bias/*``, the pictures and ``epoch`` follow. So the dashboard opens on the training curves, not on
  single-point bias charts.
- **The HParams tab's columns** are declared in TensorBoard's hparams config (an ``Experiment``): the
  settings marked as differing come first (TensorBoard lists those first and shows the first five), then
  the main metrics in ``MAIN_METRICS`` order (the first five shown), each gap after them. A single run marks
  ``LEADING`` (model, learning rate, batch size, epochs, fold) and the settings its command set; a sweep's
  jobs write only their session (settings and status) and the sweep, when it ends, declares one config for
  all its runs with the settings that really differ across them, topped up with ``LEADING`` to the five
  TensorBoard shows (``write_sweep_hparams``).
- **Final values at the last training step** (``final_step``): ``test/*``, ``final/*`` and ``bias/*`` sit at
  the step of the last epoch's curves instead of one step past them.
- **Failed runs are marked failed**: a session whose status is ``STATUS_FAILURE`` (HParams' status column
  and filter) and a ``run_failed`` text with the error, in an event file of their own (``*.failed``) that a
  resume of the run removes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("maskdet.loggers")

# TensorBoard-only tag prefixes: sections sort in this order (TensorBoard puts names starting with digits first)
SECTIONS = {"train": "1_train", "val": "2_val", "test": "3_test", "final": "4_final"}
# settings shown first in the HParams tab when fewer than SHOWN settings differ (TensorBoard shows five)
LEADING = ("model.architecture", "model.optimizer.lr", "data.batch_size", "trainer.max_epochs", "data.fold")
SHOWN = 5
# the HParams tab's metric columns, in this order (the first five are shown); each attribute's gap follows
MAIN_METRICS = ("final/test/acc", "final/test/f1", "final/val/acc_best", "final/test/loss", "final/val/acc")
FAILED_SUFFIX = ".failed"  # the event file that marks a run failed: removed when the run is resumed
FAILED_TAG = "run_failed"


def tb_tag(name: str) -> str:
    """The TensorBoard tag of a metric name: its section numbered (``val/acc`` -> ``2_val/acc``)."""
    section, slash, rest = name.partition("/")
    return f"{SECTIONS[section]}/{rest}" if slash and section in SECTIONS else name


def final_step(trainer) -> int:
    """The step of the last training curve point (Lightning logs an epoch's metrics at ``global_step - 1``),
    where a run's test, final and bias metrics go so that they do not stretch the step axis."""
    return max(int(trainer.global_step) - 1, 0)


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger with maskdet's section prefixes (``tb_tag``) and a step that can be held
    at the last training step while the run is tested (``at_final_step``). On a resume (``purge_step``) the
    marker of a failed earlier attempt is removed: the run is running again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held_step: int | None = None
        if kwargs.get("purge_step") is not None and rank_zero_only.rank == 0:
            for marker in Path(self.log_dir).glob(f"events.out.tfevents.*{FAILED_SUFFIX}"):
                marker.unlink()

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self.held_step is not None:
            step = self.held_step
            metrics = {k: v for k, v in metrics.items() if k != "epoch"}  # the epoch counter stays on its curve
        super().log_metrics({tb_tag(k): v for k, v in metrics.items()}, step)


def _tag_for(logger):
    return tb_tag if isinstance(logger, TensorBoardLogger) else (lambda name: name)


@contextlib.contextmanager
def at_final_step(trainer):
    """While testing: metrics Lightning logs go to maskdet's TensorBoard at ``final_step`` (not one past it)."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    for logger in loggers:
        logger.held_step = final_step(trainer)
    try:
        yield
    finally:
        for logger in loggers:
            logger.held_step = None


SKIPPED = ("data.cache_dir", "data.root", "trainer.default_root_dir")  # where, not what: not a setting


def _container(node):
    """``node`` as plain containers, resolved; a value that cannot be resolved (``${hydra:...}`` in a run's
    saved config read after the run) is left out rather than failing the rest."""
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - resolved key by key below
        if not isinstance(node, DictConfig):
            raise
    out = {}
    for key in node:
        with contextlib.suppress(Exception):
            value = node[key]
            out[key] = _container(value) if OmegaConf.is_config(value) else value
    return out


def hparams_of(cfg: DictConfig) -> dict:
    """The settings that tell runs apart, flat (``model.optimizer.lr``...), for the HParams tab and loggers."""
    from maskdet.resume import flatten

    flat = {}
    for section in ("data", "model", "trainer"):
        if section not in cfg:
            continue
        for key, value in flatten(_container(cfg[section]), section).items():
            if key.endswith("_target_") or key in SKIPPED:
                continue
            if isinstance(value, (int, float, str, bool)):
                flat[key] = value
            elif value is not None:
                flat[key] = str(value)
    if "seed" in cfg:
        flat["seed"] = cfg.seed
    return flat


def final_metrics(metrics: dict) -> dict:
    """``final/<name>``: the run's test metrics, its best and last validation accuracy and each gap."""
    final = {f"final/{k}": v for k, v in metrics["test"].items()}
    final.update({f"final/{k}": v for k, v in metrics["val"].items() if k in ("val/acc_best", "val/acc")})
    final.update({f"final/bias/{k}": v for k, v in (metrics.get("bias") or {}).items() if k.endswith("/gap")})
    return final


# ---------------------------------------------------------------------------------------------- hparams protos
def _summary(tag: str, data):
    """A summary holding one piece of the hparams plugin's data (as tensorboard's hparams summaries do)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def _data_type(values) -> int:
    from tensorboard.plugins.hparams import api_pb2

    kinds = {bool if isinstance(v, bool) else float if isinstance(v, (int, float)) else str for v in values}
    if kinds == {bool}:
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_FLOAT64 if kinds == {float} else api_pb2.DATA_TYPE_STRING


def leading_settings(names, differing) -> list[str]:
    """The settings marked as differing: those that do, topped up with ``LEADING`` to the ``SHOWN`` that
    TensorBoard shows (only those that do when they are already as many)."""
    names = list(names)
    lead = [n for n in names if n in set(differing)]
    lead += [n for n in LEADING if n in names and n not in lead][:max(SHOWN - len(lead), 0)]
    return lead


def metric_order(names) -> list[str]:
    """Final metrics in the HParams tab's order: ``MAIN_METRICS``, then each gap, then the rest."""
    names = list(dict.fromkeys(names))
    first = [m for m in MAIN_METRICS if m in names]
    gaps = sorted(n for n in names if n.startswith("final/bias/") and n.endswith("/gap") and n not in first)
    return first + gaps + sorted(n for n in names if n not in first and n not in gaps)


def experiment_summary(values: dict[str, list], lead, metrics, tag=tb_tag):
    """TensorBoard's hparams config: every setting (``values``: name -> the values runs used; the ``lead``
    settings marked as differing, so listed and shown first) and the metric columns in ``metrics`` order."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    lead = list(lead)
    order = lead + sorted(n for n in values if n not in lead)
    infos = [api_pb2.HParamInfo(name=n, type=_data_type(values[n]), differs=n in lead) for n in order]
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag(m)), display_name=m.removeprefix("final/"),
                                       description=f"{m} (metrics.json); TensorBoard tag {tag(m)}")
                    for m in metric_order(metrics)]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos, time_created_secs=time.time())
    return _summary("_hparams_/experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_summaries(hparams: dict, failed: bool) -> list:
    """A run's session for the HParams tab: its settings (a group of its own: the run) and its status."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = value
        else:
            start.hparams[name].string_value = str(value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS,
                                         end_time_secs=time.time())
    return [_summary("_hparams_/session_start_info", plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            _summary("_hparams_/session_end_info", plugin_data_pb2.HParamsPluginData(session_end_info=end))]


# ---------------------------------------------------------------------------------------------- a training run
def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def command_settings(hparams: dict) -> set[str]:
    """The settings the command line set (Hydra's task overrides), among ``hparams``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = {str(o).lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task if "=" in str(o)}
    return keys & set(hparams)


def log_final(trainer, hparams: dict, metrics: dict) -> None:
    """The run's settings with its final metrics, once, at the last training step: every logger gets both;
    TensorBoard also the run's session (status success) and, outside a sweep, its hparams config (a sweep
    declares one config for all its runs when it ends: ``write_sweep_hparams``)."""
    final = final_metrics(metrics)
    step = final_step(trainer)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)  # no metrics: Lightning's TensorBoard writes no hparams summary of its own
        logger.log_metrics(final, step=step)
        if isinstance(logger, LightningTensorBoardLogger) and trainer.is_global_zero:
            writer = logger.experiment._get_file_writer()
            if not _multirun():
                lead = leading_settings(hparams, set(LEADING) | command_settings(hparams))
                writer.add_summary(experiment_summary({k: [v] for k, v in hparams.items()}, lead, final,
                                                      tag=_tag_for(logger)), step)
            for summary in session_summaries(hparams, failed=False):
                writer.add_summary(summary, step)
        logger.save()


def resume_options(logger_cfg: DictConfig, resume_step: int | None) -> dict:
    """Extra arguments for a logger of a resumed run: TensorBoard drops the points the interrupted run logged
    after its checkpoint (``purge_step``, which TensorBoard's reader honours), so each epoch keeps one point."""
    if resume_step is not None and str(logger_cfg.get("_target_", "")).endswith("TensorBoardLogger"):
        return {"purge_step": resume_step}
    return {}


def write_failure(log_dir: Path, hparams: dict, error: str, step: int = 0) -> None:
    """Mark the run in ``log_dir`` failed for TensorBoard: its session with ``STATUS_FAILURE`` and a
    ``run_failed`` text, in an event file of their own (``*.failed``), which a resume removes."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir), filename_suffix=FAILED_SUFFIX) as writer:
        for summary in session_summaries(hparams, failed=True):
            writer._get_file_writer().add_summary(summary, step)
        writer.add_text(FAILED_TAG, f"**This run failed.** {error}", step)


def log_failure(trainer, hparams: dict, err: BaseException) -> None:
    """A run that failed after its loggers started: marked failed in TensorBoard (never raises: the
    original error is what the run reports)."""
    try:
        for logger in trainer.loggers:
            if isinstance(logger, LightningTensorBoardLogger) and Path(logger.log_dir).is_dir():
                logger.experiment.flush()
                write_failure(Path(logger.log_dir), hparams, f"{type(err).__name__}: {err}", final_step(trainer))
    except Exception as problem:  # noqa: BLE001 - e.g. a full disk: the run's own error matters more
        log.warning("could not mark the failed run in TensorBoard: %s", problem)


# ---------------------------------------------------------------------------------------------- a sweep's end
def _read_config(run: Path) -> DictConfig | None:
    from maskdet import runfolder

    path = Path(run) / runfolder.CONFIG
    try:
        return OmegaConf.load(path) if path.is_file() else None
    except Exception:  # noqa: BLE001 - a hand-edited config: the run is left out of the HParams config
        return None


def _tensorboard_dir(cfg: DictConfig, run: Path) -> Path | None:
    """Where the run's TensorBoard logger writes (None when the run had none): ``<run>/tensorboard``."""
    logger = cfg.get("logger") or {}
    found = [c for c in logger.values() if c is not None and str(c.get("_target_", "")).endswith("TensorBoardLogger")]
    return Path(run) / "tensorboard" if found else None


def write_sweep_hparams(sweep_dir: Path, writer, runs) -> list[Path]:
    """At a sweep's end: its hparams config in the sweep's own TensorBoard (``writer``), over every run of
    the sweep (the folds inside cv_in_job trials included): the settings that differ across them first,
    then the main metrics; and each failed job that left nothing in TensorBoard marked failed there.
    ``runs`` is the cv summary's table of jobs. Returns the job folders marked failed."""
    from maskdet.evaluation.cv import run_folders

    values: dict[str, list] = {}
    for run in run_folders([sweep_dir]):
        cfg = _read_config(run)
        if cfg is None:
            continue
        with contextlib.suppress(Exception):  # an unresolvable config (a resolver of another version): left out
            for key, value in hparams_of(cfg).items():
                values.setdefault(key, []).append(value)
    if values:
        differing = [k for k, v in values.items() if len({repr(x) for x in v}) > 1 or len(v) < len(max(values.values(), key=len))]
        metrics = [*MAIN_METRICS, *(f"final/{c}" for c in runs.columns if c.startswith("bias/") and c.endswith("/gap"))]
        writer._get_file_writer().add_summary(experiment_summary(values, leading_settings(sorted(values), differing), metrics), 0)
    marked = []
    for _, row in runs[runs["status"] == "failed"].iterrows():
        job = Path(row["run_dir"])
        cfg = _read_config(job)
        board = _tensorboard_dir(cfg, job) if cfg is not None else None
        if board is None or any(job.glob("fold_*")) or list(board.glob(f"events.out.tfevents.*{FAILED_SUFFIX}")):
            continue  # no TensorBoard, a trial whose folds carry their own, or marked by the run itself
        with contextlib.suppress(Exception):
            write_failure(board, hparams_of(cfg), row["error"])
            marked.append(job)
    return marked

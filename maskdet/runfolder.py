"""The run-folder contract: what a run folder holds, and how a finished, failed or resumable run is told.

One home for it, used by train (and its resume), evaluate / explain / export (which never write into a
run that is not theirs), the model card, cv and compare::

    <run>/.hydra/config.yaml      the run's composed settings (Hydra); its data node is the run's data config
    <run>/.hydra/overrides.yaml   the command-line overrides that made it (a sweep job's configuration)
    <run>/checkpoints/last.ckpt   full training state at the end of the latest epoch (resume from it)
    <run>/checkpoints/best.ckpt   weights of the best validation epoch (tested; evaluate/predict/export use it)
    <run>/data_report.json        what the data was; <run>/splits.csv the split of every image
    <run>/metrics.json            the run's metrics and what it was tested on: the run FINISHED
    <run>/failed.json             the error of a run that did not finish: the run FAILED
    <run>/tested_on.json          what the test ran on (test-split fingerprint, classes, trainer settings),
                                  copied into metrics.json: compare pools only runs tested on the same data
    <run>/predictions.csv ...     reports (RESULTS below): valid only beside metrics.json
    <run>/train.log               the log (Hydra); <run>/.maskdet.lock held while a process trains in it

A run is *finished* when ``metrics.json`` is there and ``failed.json`` is not, *failed* when
``failed.json`` is there, *resumable* when neither is and ``last.ckpt`` is. A resume first removes the
results (and any earlier ``failed.json``), so a resume that fails leaves only its ``failed.json``, never an
older report that could be read as its result.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import traceback
from pathlib import Path

from filelock import FileLock, Timeout

from maskdet.errors import ConfigError, MaskdetError
from maskdet.jsonfile import write_json

log = logging.getLogger(__name__)

CONFIG = Path(".hydra/config.yaml")
OVERRIDES = Path(".hydra/overrides.yaml")
CHECKPOINTS = Path("checkpoints")
LAST = CHECKPOINTS / "last.ckpt"
BEST = CHECKPOINTS / "best.ckpt"
METRICS = Path("metrics.json")
FAILED = Path("failed.json")
PREDICTIONS = Path("predictions.csv")
DATA_REPORT = Path("data_report.json")
SPLITS = Path("splits.csv")
BIAS_REPORT = Path("bias_report.json")
TESTED_ON = Path("tested_on.json")
LOCK = Path(".maskdet.lock")
# What a finished run's test wrote: read as results by compare, cv and the model card.
RESULTS = ("metrics.json", "tested_on.json", "predictions.csv", "classification_report.txt", "confusion_matrix.csv",
           "confusion_matrix.png", "bias_report.json", "bias_report.csv", "bias_report.md", "bias.png",
           "bias_study.csv", "bias_study_pairs.csv", "bias_study.md", "explain", "calibration")


def is_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run (its config, a result, a failure or a checkpoint)."""
    folder = Path(folder)
    return any((folder / name).exists() for name in (".hydra", METRICS, FAILED, CHECKPOINTS))


def state(run: Path) -> str:
    """``finished``, ``failed``, ``resumable`` or ``empty`` (see the module docstring)."""
    run = Path(run)
    if (run / FAILED).is_file():
        return "failed"
    if (run / METRICS).is_file():
        return "finished"
    if (run / LAST).is_file():
        return "resumable"
    return "empty"


def run_of_checkpoint(ckpt_path) -> Path | None:
    """The run folder holding ``ckpt_path`` (``<run>/checkpoints/<name>.ckpt`` beside ``<run>/.hydra``)."""
    if not ckpt_path:
        return None
    ckpt = Path(str(ckpt_path)).expanduser().resolve()
    run = ckpt.parent.parent
    if ckpt.parent.name == CHECKPOINTS.name and (run / CONFIG).is_file():
        return run
    return None


class ExistingRunError(ConfigError):
    """A command was pointed at a folder that holds another run; that folder is left exactly as it was."""


def refuse_existing_run(folder: Path, command: str, own_config: bool = False) -> None:
    """A command never writes into a folder that already holds a run (its own resume aside, which the
    caller handles): the run's config, reports and log would be replaced by another command's.
    ``own_config``: the command's own Hydra config is already in the folder (the CLI writes it first),
    so only results, a failure record or checkpoints count."""
    folder = Path(folder)
    signs = (METRICS, FAILED, CHECKPOINTS, PREDICTIONS) if own_config else (CONFIG.parent, METRICS, FAILED, CHECKPOINTS)
    if folder.is_dir() and any((folder / name).exists() for name in signs):
        raise ExistingRunError(
            f"{folder} already holds a run ({state(folder)}): maskdet.{command} writes into a new folder of its "
            "own and never over another run. Leave hydra.run.dir (or paths.output_dir) at its default, or name a "
            f"new folder; to continue that run, resume it with maskdet.train ckpt_path={folder / LAST}.")


def refuse_links(run: Path) -> None:
    """A run folder that will be written into (a resume) must not hold symbolic links: ``train.log``,
    ``metrics.json`` or the lock file pointing elsewhere would have the run append to, or truncate, a file
    outside it. Real folders hold none; a downloaded or crafted one may."""
    run = Path(run)
    links = [p for folder in (run, run / ".hydra", run / CHECKPOINTS) if folder.is_dir() and not folder.is_symlink()
             for p in folder.iterdir() if p.is_symlink()]
    links += [p for p in (run / ".hydra", run / CHECKPOINTS) if p.is_symlink()]
    if links:
        shown = ", ".join(f"{p.relative_to(run)} -> {p.readlink()}" for p in links[:5])
        raise ConfigError(f"{run} holds symbolic links ({shown}{', ...' if len(links) > 5 else ''}): writing into the "
                          "run would follow them out of its folder. Replace each link with the file it points to "
                          "(or delete it), then try again.")


def own_best_checkpoint(run: Path, best_model_path: str | None) -> str | None:
    """The best checkpoint of *this* run folder. A run that was copied or moved carries the absolute
    ``best_model_path`` of its old place inside ``last.ckpt``: the file there is another run's (or gone), so
    the same file name in this run's own ``checkpoints/`` is used; a best checkpoint that should exist but
    does not is an error, not a silent test of the last epoch's weights."""
    if not best_model_path:
        return None
    own = Path(run).resolve() / CHECKPOINTS / Path(best_model_path).name
    if Path(best_model_path).resolve() != own:
        log.warning("best checkpoint recorded at %s (the run's old place): testing this folder's own %s",
                    best_model_path, own)
    if not own.is_file():
        raise ConfigError(f"The run's best checkpoint {own} is missing (its checkpoint recorded "
                          f"{best_model_path}), so the run cannot be tested with its best weights. Copy the run "
                          "folder whole, checkpoints/ included.")
    return str(own)


@contextlib.contextmanager
def training_lock(run: Path):
    """Held while a process trains in ``run``: a second resume of the same run is refused, not interleaved.
    The operating system releases it when the process dies, so a killed run can be resumed at once."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    refuse_links(run)
    lock = FileLock(run / LOCK, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"Another maskdet process is training in {run} (it holds {run / LOCK}): wait for it to "
                          "finish, or stop it, before resuming this run again.") from None
    try:
        yield
    finally:
        lock.release()


def clear_results(run: Path) -> list[str]:
    """Remove a run's results and failure record before it is resumed; returns the names removed."""
    removed = []
    for name in (*RESULTS, FAILED.name):
        path = Path(run) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        log.info("resume: removed the earlier results %s (rewritten when the run finishes)", ", ".join(removed))
    return removed


def remove_run_folder(folder: Path) -> None:
    """Delete a run folder that holds no result, first closing the log file Hydra opened inside it."""
    folder = Path(folder)
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().is_relative_to(folder.resolve()):
            handler.close()
            logging.getLogger().removeHandler(handler)
    shutil.rmtree(folder, ignore_errors=True)


def remove_if_unstarted(folder) -> bool:
    """A command that was refused before it wrote anything (a bad checkpoint, no images) leaves no folder:
    removed when it holds nothing but Hydra's ``.hydra/`` and the command's log."""
    folder = Path(str(folder))
    if not folder.is_dir() or folder.is_symlink():
        return False
    if any(entry.name != ".hydra" and entry.suffix != ".log" for entry in folder.iterdir()):
        return False
    remove_run_folder(folder)
    return True


def mark_failed(run: Path, err: BaseException) -> Path | None:
    """``failed.json`` beside the run's outputs: the run did not finish, and why (None if even that small
    file cannot be written, e.g. on a full disk; the error still reaches the console)."""
    try:
        return write_json(Path(run) / FAILED, {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
    except OSError:
        log.error("could not write %s", Path(run) / FAILED)
        return None


def remove_unstarted_run(output_dir: Path, ckpt_path: str | None, err: BaseException) -> None:
    """A run refused before training (and not a resume) holds no result: close the log file Hydra opened
    inside its folder, then delete the folder. A failed run that trained keeps it, with failed.json."""
    if getattr(err, "training_started", False) or run_of_checkpoint(ckpt_path) is not None \
            or isinstance(err, ExistingRunError):
        return
    remove_run_folder(output_dir)


class TrainingFailed(MaskdetError):
    """Training started and then failed for a reason outside maskdet (a full disk, say)."""

    training_started = True


def training_failed(output_dir: Path, err: BaseException, record: bool = True) -> BaseException:
    """Bookkeeping for a run that failed after training started: the error is marked so that the run's folder
    is kept (``remove_unstarted_run``), ``failed.json`` records it (``record``: the process that owns the
    folder), and the error to raise is returned: a full disk becomes one paragraph saying what to do."""
    err.training_started = True
    if record:
        mark_failed(output_dir, err)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return TrainingFailed(f"No space left on the disk holding {output_dir} while the run was writing "
                              f"({err.filename or 'a checkpoint or report'}); the run is marked failed and no "
                              "checkpoint was left half-written. Free some space, or write runs elsewhere with "
                              "paths.log_dir=<folder> (checkpoints need about 3x the model's weights).")
    return err

"""Training progress for the console: rich's live bar in a terminal, one plain line per epoch anywhere
else (CI, ``nohup``, SLURM, notebooks, ``make train > log``)."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from maskdet.progress import console, duration


class EpochLines(ProgressBar):
    """Training progress as one console line per epoch (epoch, elapsed, ETA, train loss, validation
    figures): Lightning's bars redraw one line with carriage returns, which a log file shows as nothing
    until the end, or as thousands of fragments."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._started = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._started, self._first_epoch = time.perf_counter(), trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._enabled or not trainer.is_global_zero or self._started is None:
            return
        epoch, last = trainer.current_epoch + 1, trainer.max_epochs
        elapsed = time.perf_counter() - self._started
        done = epoch - self._first_epoch
        eta = f", ETA {duration(elapsed / done * (last - epoch))}" if last and last > 0 and done > 0 else ""
        metrics = trainer.callback_metrics
        figures = {k: float(metrics[k]) for k in ("train/loss", "val/loss", "val/acc", "val/f1", "val/acc_best")
                   if k in metrics}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items())
        console.info("epoch %d/%s: %s elapsed%s; %s", epoch, last if last and last > 0 else "?",
                     duration(elapsed), eta, shown)


def progress_bar() -> ProgressBar:
    """``callbacks.progress_bar``: rich's live bar in a terminal, one line per epoch anywhere else."""
    return RichProgressBar() if sys.stdout.isatty() else EpochLines()

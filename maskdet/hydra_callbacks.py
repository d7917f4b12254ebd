"""Hydra callbacks (entry-point side): summarise a multirun when it ends."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from maskdet.evaluation.cv import write_summary

log = logging.getLogger("maskdet.sweep")


class SweepSummary(Callback):
    """Write cv_summary.csv / .md (and a TensorBoard text + scalars) in the sweep folder; exit non-zero
    after writing it if any job failed, so a failure is neither silent nor a reason to lose the others."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        runs, summary = write_summary(sweep_dir)
        markdown = (sweep_dir / "cv_summary.md").read_text()
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(sweep_dir / "tensorboard")) as writer:
            writer.add_text("cv_summary", markdown)
            for rank, row in summary.iterrows():
                for metric in ("val/acc_best", "test/acc", "test/f1"):
                    writer.add_scalar(f"cv_{metric} mean", row[f"{metric} mean"], global_step=rank)
        log.info("sweep summary: %s\n%s", sweep_dir / "cv_summary.md", markdown)
        failed = runs[runs["status"] == "failed"]
        if len(failed):
            print(f"\nmaskdet: {len(failed)} of {len(runs)} sweep jobs failed; see {sweep_dir / 'cv_summary.md'}",
                  file=sys.stderr)
            sys.exit(1)

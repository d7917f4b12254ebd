"""Lightning callbacks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from maskdet.evaluation.explain import write_explanations

log = logging.getLogger("maskdet.explain")


class Explanations(L.Callback):
    """After the first test of a run: Grad-CAM grid, galleries, reliability diagram, filters and weight
    histograms into ``output_dir`` and TensorBoard's image and histogram tabs (rank zero only)."""

    def __init__(self, output_dir: str, *, per_class: int, low_confidence: float, gallery_size: int,
                 target_layer: str | None, feature_layers: Sequence[str] | None):
        """The settings are ``write_explanations``'; their values are in conf/explanations/default.yaml."""
        self.output_dir = Path(output_dir)
        self.options = dict(per_class=per_class, low_confidence=low_confidence, gallery_size=gallery_size,
                            target_layer=target_layer, feature_layers=feature_layers)
        self.done = False

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done or not trainer.is_global_zero or trainer.world_size > 1 or trainer.sanity_checking:
            return  # under DDP the dedicated `python -m maskdet.explain` draws the same pictures
        self.done = True
        experiment = next((lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_figure")), None)
        result = write_explanations(pl_module, trainer.datamodule, self.output_dir, tensorboard=experiment,
                                    step=trainer.global_step, **self.options)
        log.info("explanations in %s: %s", self.output_dir, ", ".join(result["pictures"]))

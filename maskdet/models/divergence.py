"""``DivergenceGuard``: training stops at the first batch whose loss is non-finite or exploding (see
maskdet.finite, where its config path ``maskdet.finite.DivergenceGuard`` still leads)."""

from __future__ import annotations

import lightning as L
import numpy as np

from maskdet.finite import ADVICE, DivergedError


class DivergenceGuard(L.Callback):
    """Stop training when a batch's loss is non-finite or above ``max_loss``.

    Cross-entropy at chance is ln(classes) (about 1.4 for four classes); a loss of ``max_loss`` (default 1000)
    means logits in the thousands, i.e. a diverged optimiser, even when the number is still finite.
    """

    def __init__(self, max_loss: float = 1000.0):
        self.max_loss = float(max_loss)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        if not np.isfinite(value) or value > self.max_loss:
            raise DivergedError(
                f"Training diverged at epoch {trainer.current_epoch}, batch {batch_idx} (stage train): the loss is "
                f"{value:.3g} (limit callbacks.divergence.max_loss={self.max_loss:g}). {ADVICE} "
                "The run is marked failed and no reports were written from it.")

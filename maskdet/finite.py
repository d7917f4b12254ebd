"""Divergence is a failure, not a result: non-finite or exploding numbers stop the run with a reason.

A NaN loss still lets Lightning finish a run, and ``argmax`` of NaN probabilities is class 0, so without
these checks a diverged model writes a full set of normal-looking reports. ``require_finite`` guards every
place where probabilities become predictions (test, predict, evaluate, export, explain);
``DivergenceGuard`` stops training at the first bad batch.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from maskdet.errors import MaskdetError

ADVICE = ("Try a lower learning rate (model.optimizer.lr), gradient clipping (trainer.gradient_clip_val=1.0) "
          "or full precision (trainer.precision=32-true).")


class DivergedError(MaskdetError):
    """Training or inference produced non-finite or exploding numbers."""


def require_finite(values, what: str, hint: str = ADVICE) -> None:
    """Raise ``DivergedError`` naming ``what`` if ``values`` (tensor or array) holds NaN or infinity."""
    array = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=float)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise DivergedError(f"{what}: {bad} of {array.size} values are NaN or infinite, so no prediction can be "
                            f"derived from them. {hint}")


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

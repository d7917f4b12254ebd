"""Divergence is a failure, not a result: non-finite or exploding numbers stop the run with a reason.

A NaN loss still lets Lightning finish a run, and ``argmax`` of NaN probabilities is class 0, so without
these checks a diverged model writes a full set of normal-looking reports. ``require_finite`` guards every
place where probabilities become predictions (test, predict, evaluate, export, explain);
``DivergenceGuard`` (maskdet.models.divergence) stops training at the first bad batch.
"""

from __future__ import annotations

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


def __getattr__(name: str):
    # DivergenceGuard is a Lightning callback (maskdet/models/divergence.py); configs name it
    # maskdet.finite.DivergenceGuard, and this module stays free of Lightning, so inference imports it quickly.
    if name == "DivergenceGuard":
        from maskdet.models.divergence import DivergenceGuard

        return DivergenceGuard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T > 0 that
divides every logit, fitted on the validation split by minimising the negative log-likelihood. It changes
no prediction (argmax is unchanged), only how confident the probabilities are.

T lives in the model as the ``temperature`` buffer of ``MaskClassifier`` (saved in every checkpoint's
state_dict, inside the ONNX graph, applied by ``forward``); ``fit_temperature`` finds it from logits and
labels, ``split_logits`` gives a split's uncalibrated logits, and ``write_calibration`` stores T and the
validation figures the abstention threshold is chosen from into a checkpoint, atomically.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from maskdet.data.augment import to_float
from maskdet.finite import require_finite

# T is searched as log T in [-LOG_T_LIMIT, LOG_T_LIMIT]: T from 0.01 to 100 covers any real network; a value
# at the edge means the logits carry no information the NLL can use (a constant model, say).
LOG_T_LIMIT = math.log(100.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T minimising the mean NLL of ``softmax(logits / T)`` for ``labels`` (L-BFGS on log T,
    in float64, as in Guo et al.'s reference implementation; the NLL is convex in 1/T, so this finds the
    global minimum)."""
    logits = logits.detach().double().cpu()
    labels = labels.detach().long().cpu()
    require_finite(logits, "The validation logits temperature scaling is fitted on")
    if len(logits) == 0:
        raise ValueError("temperature scaling needs at least one validation image")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.clamp(-LOG_T_LIMIT, LOG_T_LIMIT).exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(-LOG_T_LIMIT, LOG_T_LIMIT).exp())


@contextlib.contextmanager
def uncalibrated(model):
    """``model`` with T = 1 inside the block (its raw logits), restored after."""
    saved = model.temperature.detach().clone()
    model.temperature.fill_(1.0)
    try:
        yield model
    finally:
        model.temperature.copy_(saved)


@torch.no_grad()
def split_logits(model, datamodule, split: str = "val") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uncalibrated logits (float32, CPU), labels and index rows of one split, images decoded as in
    ``inference.predict_split``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels, rows = [], [], []
    try:
        with uncalibrated(model):
            for batch in datamodule.image_dataloader(split):
                logits.append(model(to_float(batch["image"].to(device))).float().cpu())
                labels.append(batch["label"].cpu())
                rows.append(batch["row"].cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(logits)
    require_finite(logits, f"The model's outputs on the {split} split")
    return logits, torch.cat(labels), torch.cat(rows)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def calibration_record(logits: torch.Tensor, labels: torch.Tensor, temperature: float, fitted: bool) -> dict:
    """What the checkpoint keeps (``checkpoint["maskdet"]["calibration"]``): T, whether it was fitted, the
    validation NLL before and after, and each validation image's calibrated confidence and correctness, from
    which ``predict`` chooses an abstention threshold for a target error without the data."""
    probs = (logits.double() / temperature).softmax(1)
    return {"temperature": float(temperature), "fitted": bool(fitted), "fitted_on": "val", "images": int(len(labels)),
            "val_nll_before": nll(logits, labels), "val_nll_after": nll(logits, labels, temperature),
            "val_confidence": probs.max(1).values.float(), "val_correct": probs.argmax(1) == labels.long()}


def write_calibration(ckpt_path: str | Path, record: dict) -> None:
    """Store T (the state_dict's ``temperature``) and ``record`` in the checkpoint at ``ckpt_path``, written
    to a temporary file beside it and renamed (``AtomicCheckpointIO``): whole or unchanged."""
    from maskdet.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    checkpoint = io.load_checkpoint(ckpt_path, map_location="cpu")
    checkpoint["state_dict"]["temperature"] = torch.tensor(float(record["temperature"]))
    if not isinstance(checkpoint.get("maskdet"), dict):
        checkpoint["maskdet"] = {}
    checkpoint["maskdet"]["calibration"] = record
    io.save_checkpoint(checkpoint, ckpt_path)


def read_calibration(checkpoint: dict) -> dict | None:
    """The calibration record of a checkpoint read by ``preflight.read_checkpoint`` (which refused the file if
    ``calibration_problem`` found one), or None (written before temperature scaling, or by a run without it)."""
    state = checkpoint.get("maskdet")
    record = state.get("calibration") if isinstance(state, dict) else None
    return record if isinstance(record, dict) else None


def calibration_problem(checkpoint: dict) -> str | None:
    """What is wrong with a checkpoint's temperature and calibration record (None when nothing is): the file
    may come from someone else, and T divides every logit while the validation confidences choose the
    abstention threshold, so both are checked as data before use."""
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint.get("state_dict"), dict) else {}
    t = state_dict.get("temperature")
    if t is not None and not (isinstance(t, torch.Tensor) and t.numel() == 1 and t.is_floating_point()
                              and math.isfinite(float(t)) and float(t) > 0):
        return f"its temperature {repr(t)[:60]} must be one finite number above 0"
    state = checkpoint.get("maskdet")
    record = state.get("calibration") if isinstance(state, dict) else None
    if record is None:
        return None
    if not isinstance(record, dict):
        return f"maskdet.calibration is a {type(record).__name__}, not a record"
    temperature = record.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) \
            or temperature <= 0:
        return f"maskdet.calibration.temperature={repr(temperature)[:60]} must be one finite number above 0"
    if t is not None and not math.isclose(float(t), temperature, rel_tol=1e-5):
        return f"the state_dict's temperature {float(t):.6g} differs from maskdet.calibration's {temperature:.6g}"
    confidence, correct = record.get("val_confidence"), record.get("val_correct")
    if confidence is None and correct is None:
        return None
    if not (isinstance(confidence, torch.Tensor) and confidence.dim() == 1 and confidence.is_floating_point()):
        return "maskdet.calibration.val_confidence must be a 1-D tensor of floating-point confidences"
    if not (isinstance(correct, torch.Tensor) and correct.dim() == 1 and correct.dtype == torch.bool):
        return "maskdet.calibration.val_correct must be a 1-D tensor of true/false"
    if len(confidence) != len(correct):
        return f"maskdet.calibration holds {len(confidence)} validation confidences but {len(correct)} outcomes"
    if len(confidence) and not bool(((confidence >= 0) & (confidence <= 1)).all()):
        return "maskdet.calibration.val_confidence holds values outside [0, 1] (or NaN)"
    return None

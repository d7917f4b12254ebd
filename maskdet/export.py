"""Export a checkpoint to ONNX, prove the exported model gives the same answers, write a model card.

    python -m maskdet.export ckpt_path=<run>/checkpoints/best.ckpt

Writes model.onnx (input ``images``: float32 N x 3 x H x W RGB in [0, 1], dynamic N; output
``probabilities``; normalisation is inside the graph), model.json (image size, mean, std, class names)
and model_card.md. Parity is checked with onnxruntime on real images of the run's test split: the export
fails unless every probability is within ``max_abs_diff`` and every predicted class is the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from maskdet import runfolder
from maskdet.checkpoints import warn_if_demonstration
from maskdet.cli import checkpoint_and_data, entry_point
from maskdet.config import register_resolvers
from maskdet.console import summary
from maskdet.errors import MaskdetError, exit_on_error
from maskdet.evaluation.model_card import model_card
from maskdet.finite import require_finite
from maskdet.inference import predict_split
from maskdet.jsonfile import write_json
from maskdet.preflight import check_config
from maskdet.writing import write_text

log = logging.getLogger("maskdet.export")
register_resolvers()


class ExportError(MaskdetError):
    """The exported model does not reproduce the checkpoint's answers, or cannot be written."""


class Probabilities(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).softmax(1)


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise ExportError("Exporting needs onnx and onnxruntime (the `export` extra): pip install -e '.[export]'") from None
    return onnxruntime


def export_onnx(model, path: Path, image_size: int) -> None:
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(Probabilities(model).eval(), (example,), str(path), input_names=["images"],
                      output_names=["probabilities"], dynamic_shapes={"images": {0: batch}},
                      external_data=False, dynamo=True)


def check_parity(model, path: Path, images: torch.Tensor, max_abs_diff: float) -> dict:
    """Run the same images through PyTorch and onnxruntime; raise ExportError on any disagreement."""
    onnxruntime = _require_onnx()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = Probabilities(model).eval()(images).numpy()
    got = session.run(["probabilities"], {"images": images.numpy().astype(np.float32)})[0]
    require_finite(expected, f"The checkpoint's probabilities on {len(images)} test images")
    require_finite(got, f"The ONNX model's probabilities on {len(images)} test images ({path} was not kept)")
    diff = float(np.abs(expected - got).max())
    same = int((expected.argmax(1) == got.argmax(1)).sum())
    result = {"images": len(images), "max_abs_diff": diff, "same_prediction": same, "tolerance": max_abs_diff}
    if not diff <= max_abs_diff or same != len(images):  # `not <=`: a NaN difference fails too
        raise ExportError(f"ONNX parity failed on {len(images)} test images: max |p_torch - p_onnx| = {diff:.2e} "
                          f"(tolerance {max_abs_diff:.0e}), {len(images) - same} different predictions. "
                          f"{path} was not kept.")
    return result


def export(cfg: DictConfig) -> dict:
    """Every check that needs no data first (also when called from Python), then the ONNX file and its parity."""
    check_config(cfg, "export")
    _require_onnx()
    ckpt_path = Path(cfg.ckpt_path)
    model, datamodule, _ = checkpoint_and_data(cfg)
    model = model.cpu().eval()
    warn_if_demonstration(model, ckpt_path)  # the exported file travels without the README's warning
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    images = predict_split(model, datamodule)[0][: cfg.parity_images]  # refuses a diverged checkpoint first
    export_onnx(model, onnx_path, model.hparams.image_size)
    try:
        parity = check_parity(model, onnx_path, images, cfg.max_abs_diff)
    except MaskdetError:
        onnx_path.unlink(missing_ok=True)
        raise
    sidecar = {"onnx": onnx_path.name, "input": "images: float32 N x 3 x H x W, RGB in [0, 1] (normalised inside)",
               "output": "probabilities: float32 N x C", "image_size": model.hparams.image_size,
               "resize": "PIL bilinear (antialiased) to image_size x image_size",
               "mean": list(model.hparams.mean), "std": list(model.hparams.std),
               "class_names": list(model.hparams.class_names), "architecture": model.hparams.architecture,
               "checkpoint": str(ckpt_path), "parity": parity}
    write_json(out / "model.json", sidecar)
    write_text(out / "model_card.md", model_card(model, ckpt_path, sidecar))
    summary("exported %s (parity on %d test images: max diff %.1e)", onnx_path, parity["images"], parity["max_abs_diff"])
    return sidecar


@entry_point("export")
def main(cfg: DictConfig) -> None:
    exit_on_error(export, cfg, on_error=lambda err: runfolder.remove_if_unstarted(cfg.paths.output_dir))


if __name__ == "__main__":
    main()

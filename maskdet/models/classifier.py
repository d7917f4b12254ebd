"""``FaceClassifier``: a trained network with its preprocessing and temperature (float images in [0, 1] ->
calibrated logits), without Lightning.

It is what inference needs of ``MaskClassifier`` (the LightningModule that trains it): the same state dict
(``net.*``, ``temperature``) and the same forward, which both compute with ``calibrated_logits``. predict
loads this one, because importing Lightning costs seconds that a one-photo prediction should not pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
from torch import nn

from maskdet.models.networks import build_network


def register_preprocessing(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """The normalisation buffers (not saved: the hyper-parameters hold them) and the temperature, saved in the
    state dict. Temperature scaling (Guo et al. 2017): logits / T; 1 while training, fitted on the validation
    split after fit (maskdet.models.calibration), so evaluate, predict, explain and the ONNX graph all give
    calibrated probabilities."""
    module.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("temperature", torch.ones(()))


def calibrated_logits(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``module.net``'s logits for float images in [0, 1], normalised and divided by the temperature."""
    # channels-last: convolutions run faster in it on CPUs (about 15-25 % here) and on tensor cores
    images = ((images - module.mean) / module.std).contiguous(memory_format=torch.channels_last)
    return module.net(images) / module.temperature  # x / 1.0 is x exactly: training is unchanged


def default_temperature(state_dict: dict, prefix: str) -> None:
    """A checkpoint written before temperature scaling has no ``temperature``: it loads with T = 1."""
    state_dict.setdefault(prefix + "temperature", torch.ones(()))


class FaceClassifier(nn.Module):
    """A checkpoint's network for inference: ``hparams`` holds what predict reads (class names, image size)."""

    def __init__(self, architecture: str, class_names: Sequence[str], image_size: int, mean: Sequence[float],
                 std: Sequence[float], freeze: str = "none"):
        super().__init__()
        self.hparams = SimpleNamespace(architecture=architecture, num_classes=len(class_names),
                                       class_names=list(class_names), image_size=int(image_size),
                                       mean=[float(m) for m in mean], std=[float(s) for s in std], freeze=freeze)
        self.net, self.head_name = build_network(architecture, len(class_names), image_size, None, freeze)
        register_preprocessing(self, mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return calibrated_logits(self, images)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        default_temperature(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

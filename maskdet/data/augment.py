"""Training augmentation on whole batches on the device, with per-sample random parameters.

torchvision's v2 transforms draw one set of parameters per call, so applied to a batch every image
would get the same flip, angle and jitter; per-image calls would put Python back in the hot loop. The
four operations the transfer-learning notebook uses (horizontal flip, rotation, brightness and contrast jitter) are a few tensor
lines each when written for a batch, so they are written here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (as decoded and cached) to float in [0, 1], the input every maskdet model takes; the
    one place this conversion is written (datamodule batches, predict, explain, feature caches, detect)."""
    return images.float().div_(255)


class BatchAugment(nn.Module):
    """Flip with probability ``flip``, rotate by U(-rotation, rotation) degrees, scale brightness and
    contrast by U(1-j, 1+j); input and output are float images in [0, 1], shape B x 3 x H x W.

    Flip and rotation are one resampling (a per-sample affine grid, its base grid cached per size);
    brightness and contrast are one per-sample affine map of the pixel values.
    """

    def __init__(self, flip: float = 0.5, rotation: float = 15.0, brightness: float = 0.2, contrast: float = 0.2):
        super().__init__()
        self.flip, self.rotation, self.brightness, self.contrast = flip, rotation, brightness, contrast
        self._base: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _base_grid(self, h: int, w: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, device, dtype)
        if key not in self._base:  # pixel-centre coordinates in [-1, 1], as affine_grid(align_corners=False)
            ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
            xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
            self._base[key] = (xs.view(1, 1, w), ys.view(1, h, 1))
        return self._base[key]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = x.shape

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(b, generator=generator, device=x.device, dtype=x.dtype) * (high - low) + low

        if self.flip > 0 or self.rotation > 0:
            angle = uniform(-self.rotation, self.rotation) * (math.pi / 180)
            mirror = torch.where(uniform(0, 1) < self.flip, -1.0, 1.0).to(x.dtype)
            cos, sin = angle.cos().view(b, 1, 1), angle.sin().view(b, 1, 1)
            xs, ys = self._base_grid(h, w, x.device, x.dtype)
            # output pixel (x, y) samples the input at R(angle) (x, y), mirrored horizontally when flipped
            grid = torch.stack([(cos * xs - sin * ys) * mirror.view(b, 1, 1), sin * xs + cos * ys], dim=-1)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.brightness > 0 or self.contrast > 0:
            # brightness b then contrast c around the grey mean g of the brightened image:
            # ((x * b) - g * b) * c + g * b  =  x * (b * c) + g * b * (1 - c)
            bright = uniform(1 - self.brightness, 1 + self.brightness)
            contrast = uniform(1 - self.contrast, 1 + self.contrast)
            grey = (x.mean((2, 3)) * x.new_tensor([0.299, 0.587, 0.114])).sum(1)
            scale = (bright * contrast).view(b, 1, 1, 1)
            offset = (grey * bright * (1 - contrast)).view(b, 1, 1, 1)
            x = torch.addcmul(offset, x, scale)
        return x.clamp(0, 1)

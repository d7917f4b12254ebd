"""Training augmentation on whole batches on the device, with per-sample random parameters.

torchvision's v2 transforms draw one set of parameters per call, so applied to a batch every image
would get the same flip, angle and jitter; per-image calls would put Python back in the hot loop. The
four operations the seeds use (horizontal flip, rotation, brightness and contrast jitter) are a few tensor
lines each when written for a batch, so they are written here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchAugment(nn.Module):
    """Flip with probability ``flip``, rotate by U(-rotation, rotation) degrees, scale brightness and
    contrast by U(1-j, 1+j); input and output are float images in [0, 1], shape B x 3 x H x W."""

    def __init__(self, flip: float = 0.5, rotation: float = 15.0, brightness: float = 0.2, contrast: float = 0.2):
        super().__init__()
        self.flip, self.rotation, self.brightness, self.contrast = flip, rotation, brightness, contrast

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(b, generator=generator, device=x.device, dtype=x.dtype) * (high - low) + low

        if self.flip > 0:
            flip = uniform(0, 1) < self.flip
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.rotation > 0:
            angle = uniform(-self.rotation, self.rotation) * (math.pi / 180)
            cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.brightness > 0:
            x = x * uniform(1 - self.brightness, 1 + self.brightness)[:, None, None, None]
        if self.contrast > 0:
            gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2))[:, None, None, None]
            x = (x - gray) * uniform(1 - self.contrast, 1 + self.contrast)[:, None, None, None] + gray
        return x.clamp(0, 1)

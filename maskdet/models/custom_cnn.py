"""The COMP6721 study's network, layer for layer (4,733,004 parameters for 4 classes at 32x32)."""

from __future__ import annotations

from torch import nn


class FaceMaskCNN(nn.Module):
    """4 conv + BatchNorm + LeakyReLU, 2 max-pools, FC 4096-1000-512-C with dropout 0.1.

    The first fully connected layer's input follows the image size (``64 * (size // 4) ** 2``), which is
    that study's 8 * 8 * 64 = 4096 at 32 px.
    """

    def __init__(self, num_classes: int = 4, image_size: int = 32):
        super().__init__()
        self.conv_layer = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.LeakyReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(32, 128, kernel_size=3, padding=1),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.LeakyReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.fc_layer = nn.Sequential(
            nn.Dropout(p=0.1),
            nn.Linear(64 * (image_size // 4) ** 2, 1000),
            nn.ReLU(inplace=True),
            nn.Linear(1000, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.1),
            nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.fc_layer(self.conv_layer(x).flatten(1))

"""Models: backbone families by name (the COMP6721 study's custom CNN, torchvision, timm) and the
LightningModule wrapping them."""

from maskdet.models.module import MaskClassifier
from maskdet.models.networks import build_network

__all__ = ["MaskClassifier", "build_network"]

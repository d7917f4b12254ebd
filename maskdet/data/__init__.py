"""Data: sources -> index DataFrame -> splits -> subsets -> decoded cache -> batches."""

from maskdet.data.datamodule import MaskDataModule

__all__ = ["MaskDataModule"]

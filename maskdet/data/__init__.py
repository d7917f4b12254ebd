"""Data: sources -> index DataFrame -> splits -> subsets -> decoded cache -> batches."""


def __getattr__(name: str):
    # Lazy, so that `python -m maskdet.data.synthetic` runs without importing itself twice.
    if name == "MaskDataModule":
        from maskdet.data.datamodule import MaskDataModule

        return MaskDataModule
    raise AttributeError(name)


__all__ = ["MaskDataModule"]

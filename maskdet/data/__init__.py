"""Data: source -> index DataFrame -> decoded cache -> duplicates and groups -> splits -> subsets -> batches
(docs/architecture.md, "The pipeline")."""


def __getattr__(name: str):
    # Lazy, so that `python -m maskdet.data.synthetic` runs without importing itself twice.
    if name == "MaskDataModule":
        from maskdet.data.datamodule import MaskDataModule

        return MaskDataModule
    if name == "DataSettings":
        from maskdet.data.settings import DataSettings

        return DataSettings
    raise AttributeError(name)


__all__ = ["DataSettings", "MaskDataModule"]

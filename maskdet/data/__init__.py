"""Data, in the order ``prepare`` runs it: settings checked (``settings.DataSettings``) -> source read into the
index DataFrame -> label map -> data.exclude -> decoded cache (unusable files refused) -> classes numbered ->
duplicates and groups -> splits -> subsets and cap -> batches (``MaskDataModule``); docs/architecture.md,
"The pipeline"."""


def __getattr__(name: str):
    # Lazy, so that `python -m maskdet.data.synthetic` runs without importing itself twice.
    if name == "MaskDataModule":
        from maskdet.data.datamodule import MaskDataModule

        return MaskDataModule
    if name == "DataSettings":  # the config's _target_: maskdet.data.DataSettings
        from maskdet.data.settings import DataSettings

        return DataSettings
    raise AttributeError(name)


__all__ = ["DataSettings", "MaskDataModule"]

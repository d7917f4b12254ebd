"""Datamodules for tests, built the way the entry points build them (settings -> prepare_data -> setup)."""

from __future__ import annotations

from pathlib import Path

from maskdet.data.datamodule import MaskDataModule
from maskdet.data.prepare import DataSettings
from maskdet.data.report import build_report
from maskdet.data.sources import read_class_folders


def settings(root: Path | None, cache_dir: Path, source=read_class_folders, **overrides) -> DataSettings:
    """Data settings for a test dataset: class folders at ``root`` unless ``source`` says otherwise, 3 folds."""
    return DataSettings(source, root=None if root is None else str(root), cache_dir=str(cache_dir),
                        **{"num_folds": 3, **overrides})


def datamodule(root: Path | None, cache_dir: Path, source=read_class_folders, **overrides) -> MaskDataModule:
    """A set-up datamodule over ``root`` (see ``settings``)."""
    dm = MaskDataModule(settings(root, cache_dir, source, **overrides))
    dm.prepare_data()
    dm.setup()
    return dm


def report_of(dm: MaskDataModule) -> dict:
    """The data report a run writes for this datamodule (data_report.json)."""
    return build_report(dm.data, dm.settings.source_name)

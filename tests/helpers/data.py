"""Datamodules for tests, built the way the entry points build them (settings -> prepare_data -> setup)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from maskdet.data.datamodule import MaskDataModule
from maskdet.data.images import path_problem, skip
from maskdet.data.report import build_report
from maskdet.data.settings import DataSettings
from maskdet.data.sources import INDEX_COLUMNS, Scan, read_class_folders


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


def read_flat_folder(root, separator: str = "__") -> Scan:
    """A layout that is not shipped, added as a user would (one function + one config node): every image
    directly in ``root``, its class the part of its name before ``separator`` (``with_mask__0001.png``)."""
    root = Path(root)
    rows, skipped = [], []
    for path in sorted(root.iterdir()):
        label, found, _ = path.name.partition(separator)
        problem = path_problem(path, root)
        if problem or not found:
            skipped.append(skip(path, problem or f"no '{separator}' in the name to give the class"))
        else:
            rows.append({"path": str(path), "label_name": label})
    return Scan(pd.DataFrame(rows, columns=INDEX_COLUMNS), skipped, str(root))

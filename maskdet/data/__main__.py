"""Print and write the data report (data_report.json) and the split (splits.csv) of any source without training.

    python -m maskdet.data data=folder data.root=/my/faces [data.subset.gender=female ...]
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from maskdet.cli import entry_point
from maskdet.config import check_keys, register_resolvers
from maskdet.data.prepare import prepare
from maskdet.data.report import build_report, format_report, write_report
from maskdet.data.splits import splits_table
from maskdet.errors import exit_on_error

log = logging.getLogger("maskdet.data")
register_resolvers()


def _report(cfg: DictConfig) -> tuple[dict, pd.DataFrame]:
    check_keys(cfg.data, "data")
    settings = instantiate(cfg.data)
    data = prepare(settings)  # generates, decodes and hashes what is not cached yet
    return build_report(data, settings.source_name), splits_table(data.index, data.root)


@entry_point("data_report", config_path="../conf")
def main(cfg: DictConfig) -> None:
    report, splits = exit_on_error(_report, cfg)
    path = write_report(report, Path(cfg.paths.output_dir), splits)
    print(format_report(report))
    print(f"\nwritten: {path} and {path.parent / 'splits.csv'}")


if __name__ == "__main__":
    main()

"""Print and write the data report of any source without training.

    python -m maskdet.data data=folder data.root=/my/faces [data.subset.gender=female ...]
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from maskdet.config import check_keys, register_resolvers
from maskdet.data.report import format_report, write_report
from maskdet.errors import exit_on_error

log = logging.getLogger("maskdet.data")
register_resolvers()


def _report(cfg: DictConfig) -> dict:
    check_keys(cfg.data, "data")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule.report()


@hydra.main(version_base="1.3", config_path="../../conf", config_name="data_report")
def main(cfg: DictConfig) -> None:
    report = exit_on_error(_report, cfg)
    path = write_report(report, Path(cfg.paths.output_dir))
    print(format_report(report))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()

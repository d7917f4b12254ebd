"""Train, then test the best checkpoint and write the run's reports.

    python -m maskdet.train                                  # the COMP6721 study's custom CNN, embedded dataset
    python -m maskdet.train +experiment=resnet18_frozen      # the transfer-learning notebook's ResNet18
    python -m maskdet.train data=folder data.root=/my/faces  # your own class folders

This entry point stays light: Hydra composes the command line and maskdet checks it first (an unknown key,
a wrong value, ``--help`` and ``--cfg job`` are answered without importing PyTorch Lightning);
``maskdet.training`` does the work.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from maskdet.cli import entry_point
from maskdet.config import register_resolvers
from maskdet.console import route_third_party_output
from maskdet.errors import exit_on_error
from maskdet.preflight import check_settings
from maskdet.resume import register_resume_resolvers
from maskdet.runfolder import remove_unstarted_run

register_resolvers()
register_resume_resolvers()


def train(cfg: DictConfig) -> dict:
    """Run one training job described by a composed ``cfg``; return the metrics written to ``metrics.json``
    (``maskdet.training.train``)."""
    from maskdet.training import train as run

    return run(cfg)


@entry_point("train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep's job records its refusal and the sweep goes on
        exit_on_error(check_settings, cfg, "train", on_error=lambda err: remove_unstarted_run(
            Path(cfg.paths.output_dir), cfg.get("ckpt_path"), err))  # answered before Lightning is imported
    from maskdet.training import run_job

    route_third_party_output()  # Lightning, imported just now, attached its own console handler again
    return run_job(cfg)


if __name__ == "__main__":
    main()

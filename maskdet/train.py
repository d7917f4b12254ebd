"""Train, then test the best checkpoint and write the run's reports.

    python -m maskdet.train                                  # the COMP6721 study's custom CNN, embedded dataset
    python -m maskdet.train +experiment=resnet18_frozen      # the transfer-learning notebook's ResNet18
    python -m maskdet.train data=folder data.root=/my/faces  # your own class folders

This entry point stays light: Hydra composes the command line and maskdet checks it first (an unknown key,
``--help`` and ``--cfg job`` are answered without importing PyTorch Lightning); ``maskdet.training`` does
the work.
"""

from __future__ import annotations

from omegaconf import DictConfig

from maskdet.cli import entry_point
from maskdet.config import register_resolvers
from maskdet.console import route_third_party_output
from maskdet.resume import register_resume_resolvers

register_resolvers()
register_resume_resolvers()


def train(cfg: DictConfig) -> dict:
    """Run one training job described by a composed ``cfg``; return the figures written to ``metrics.json``
    (``maskdet.training.train``)."""
    from maskdet.training import train as run

    return run(cfg)


@entry_point("train")
def main(cfg: DictConfig) -> float | None:
    from maskdet.training import run_job

    route_third_party_output()  # Lightning, imported just now, attached its own console handler again
    return run_job(cfg)


if __name__ == "__main__":
    main()

"""Pictures of what a trained model looks at: Grad-CAM, feature maps, filters, weight histograms,
misclassified and low-confidence galleries, reliability diagram.

    python -m maskdet.explain ckpt_path=outputs/train/runs/<run>/checkpoints/best.ckpt
    python -m maskdet.explain ckpt_path=... explain.target_layer=net.layer3 explain.per_class=6
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from maskdet import runfolder
from maskdet.cli import checkpoint_and_data, entry_point
from maskdet.config import register_resolvers
from maskdet.console import route_third_party_output, summary
from maskdet.errors import exit_on_error
from maskdet.preflight import check_config

log = logging.getLogger("maskdet.explain")
register_resolvers()


def explain(cfg: DictConfig) -> dict:
    """Every check that needs no data first (also when called from Python, as ``train`` does), then the pictures."""
    check_config(cfg, "explain")
    from maskdet.evaluation.explain import write_explanations  # PyTorch and matplotlib: after the settings

    route_third_party_output()  # Lightning, imported just now, attached its own console handler again
    model, datamodule, _ = checkpoint_and_data(cfg)
    result = write_explanations(model, datamodule, Path(cfg.paths.output_dir), **cfg.explain)
    summary("wrote %s into %s", ", ".join(result["pictures"]), cfg.paths.output_dir)
    for note in result["notes"]:
        log.warning("%s", note)
    return result


@entry_point("explain")
def main(cfg: DictConfig) -> None:
    exit_on_error(explain, cfg, on_error=lambda err: runfolder.remove_if_unstarted(cfg.paths.output_dir))


if __name__ == "__main__":
    main()

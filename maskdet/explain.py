"""Pictures of what a trained model looks at: Grad-CAM, feature maps, filters, weight histograms,
misclassified and low-confidence galleries, reliability diagram.

    python -m maskdet.explain ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
    python -m maskdet.explain ckpt_path=... explain.target_layer=net.layer3 explain.per_class=6
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from maskdet.config import check_keys, register_resolvers
from maskdet.errors import exit_on_error
from maskdet.evaluate import data_config, load_classifier
from maskdet.evaluation.explain import write_explanations

log = logging.getLogger("maskdet.explain")
register_resolvers()


def explain(cfg: DictConfig) -> dict:
    ckpt_path = Path(cfg.ckpt_path)
    model = load_classifier(ckpt_path)
    data_cfg = data_config(cfg, ckpt_path)
    check_keys(data_cfg, "data")
    datamodule = instantiate(data_cfg, image_size=model.hparams.image_size, augment=None)
    datamodule.prepare_data()
    datamodule.setup("test")
    result = write_explanations(model, datamodule, Path(cfg.paths.output_dir), **cfg.explain)
    log.info("wrote %s into %s", ", ".join(result["pictures"]), cfg.paths.output_dir)
    for note in result["notes"]:
        log.warning("%s", note)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    exit_on_error(explain, cfg)


if __name__ == "__main__":
    main()

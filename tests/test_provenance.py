"""Provenance travels with the model: a checkpoint records what it was trained on, and predict warns when a
model trained only on the embedded drawn faces is applied to other images."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, cli_env, compose_train
from tests.helpers import commands


def _predict(ckpt, crop, env):
    return commands.run([sys.executable, "-m", "maskdet.predict", f"ckpt_path={ckpt}", f"input={crop}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_demonstration_model_says_so_and_a_real_one_does_not(tiny_run, cache_dir, tmp_path):
    from maskdet.train import train

    run = tmp_path / "synthetic_run"
    train(compose_train(["data=synthetic", "data.source.per_class=12", "data.num_folds=3", "trainer.max_epochs=1",
                         "callbacks.explanations=null", "test=false"], run, cache_dir))
    trained_on = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["maskdet"]["trained_on"]
    assert trained_on == {"source": "synthetic", "root": trained_on["root"], "images": 48, "synthetic": True}
    crop = tmp_path / "photo.png"
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(crop)
    env = cli_env(cache_dir, tmp_path)
    demo = _predict(run / "checkpoints" / "best.ckpt", crop, env)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "trained only on maskdet's embedded, procedurally drawn faces" in demo.stdout + demo.stderr
    real = _predict(tiny_run / "checkpoints" / "best.ckpt", crop, env)
    assert real.returncode == 0 and "procedurally drawn" not in real.stdout + real.stderr
    assert torch.load(tiny_run / "checkpoints" / "best.ckpt", weights_only=True)["maskdet"]["trained_on"]["synthetic"] is False

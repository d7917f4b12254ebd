"""Nothing in a file chooses code (maskdet.trust): crafted run folders and checkpoints carrying payloads are
opened with the real commands; the payload's marker file never appears, and each refusal says how to allow
code the user trusts."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import cli_env
from tests.helpers import commands


class _Marker:
    """Unpickling this creates the marker file: the harmless stand-in for a shell command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _run(args, env, cwd):
    return commands.run([sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def copied_run(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "downloaded_run"))


def test_a_saved_data_config_cannot_run_code(copied_run, cache_dir, tmp_path):
    marker = tmp_path / "PWNED"
    payload = tmp_path / "payload.npy"
    np.save(payload, np.array([_Marker(marker)], dtype=object), allow_pickle=True)
    config_path = copied_run / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["data"]["source"] = {"_target_": "numpy.load", "file": str(payload), "allow_pickle": True}
    config_path.write_text(yaml.safe_dump(config))
    env = cli_env(cache_dir, tmp_path)
    for command in ("maskdet.evaluate", "maskdet.export", "maskdet.explain"):
        done = _run([command, f"ckpt_path={copied_run / 'checkpoints' / 'best.ckpt'}"], env, tmp_path)
        assert done.returncode != 0, (command, done.stdout, done.stderr)
        assert "'numpy.load' as data.source._target_" in done.stderr, (command, done.stderr)
        assert "trusted_code=[numpy.load]" in done.stderr
        assert not marker.exists(), command
    with pickle.loads(pickle.dumps(_Marker(marker))):  # the payload is real: unpickled, it makes the marker
        pass
    assert marker.exists()


def _with_architecture(run: Path, architecture: str) -> Path:
    path = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["architecture"] = architecture
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_cannot_name_code_to_import(copied_run, cache_dir, tmp_path):
    marker = tmp_path / "created_by_sqlite.db"
    ckpt = _with_architecture(copied_run, f"sqlite3.connect/{marker}")
    crop = _crop(tmp_path)
    env = cli_env(cache_dir, tmp_path)
    for args in (["maskdet.predict", f"ckpt_path={ckpt}", f"input={crop}"], ["maskdet.evaluate", f"ckpt_path={ckpt}"]):
        done = _run(args, env, tmp_path)
        assert done.returncode != 0, done.stdout
        assert "backbone family 'sqlite3.connect'" in done.stderr, done.stderr
        assert "trusted_code=[sqlite3.connect]" in done.stderr
        assert not marker.exists()


def test_a_family_the_user_trusts_is_built(copied_run, cache_dir, tmp_path):
    package = tmp_path / "user_code"
    package.mkdir()
    (package / "my_family.py").write_text("from maskdet.models.backbones import build_custom_cnn as build\n")
    ckpt = _with_architecture(copied_run, "my_family.build/custom_cnn")
    env = {**cli_env(cache_dir, tmp_path), "PYTHONPATH": os.pathsep.join([str(package), cli_env(cache_dir, tmp_path)["PYTHONPATH"]])}
    crop = _crop(tmp_path)
    refused = _run(["maskdet.predict", f"ckpt_path={ckpt}", f"input={crop}"], env, tmp_path)
    assert refused.returncode != 0 and "trusted_code=[my_family.build]" in refused.stderr
    allowed = _run(["maskdet.predict", f"ckpt_path={ckpt}", f"input={crop}", "trusted_code=[my_family.build]"], env,
                   tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert "1 images predicted, 0 skipped" in allowed.stdout


def _crop(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "face.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(path)
    return path


def test_a_pickled_payload_in_a_checkpoint_is_never_unpickled(copied_run, tiny_dataset, cache_dir, tmp_path):
    marker = tmp_path / "PWNED"
    last = copied_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["callbacks"]["payload"] = _Marker(marker)
    torch.save(checkpoint, last)
    env = cli_env(cache_dir, tmp_path)
    for args in (["maskdet.train", "data=folder", f"data.root={tiny_dataset}", "data.num_folds=3",
                  "trainer.max_epochs=3", "callbacks.explanations=null", f"ckpt_path={last}"],
                 ["maskdet.predict", f"ckpt_path={last}", f"input={_crop(tmp_path)}"]):
        done = _run(args, env, tmp_path)
        assert done.returncode != 0 and "is not a readable PyTorch checkpoint" in done.stderr, done.stderr[-2000:]
        assert not marker.exists()
    from maskdet.checkpoint_io import AtomicCheckpointIO

    with pytest.raises(pickle.UnpicklingError):  # Lightning's own loading, as resume uses it, refuses it too
        AtomicCheckpointIO().load_checkpoint(last)
    assert not marker.exists()

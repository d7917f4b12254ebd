"""maskdet as an installed framework: a wheel (not an editable install) trains from any directory, with a
user's own experiment in their own config folder, through its console command."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

USER_EXPERIMENT = """# @package _global_
# An experiment that lives in the user's folder, not in maskdet's tree.
defaults:
  - override /model: custom_cnn
data:
  num_folds: 3
  batch_size: 16
trainer:
  max_epochs: 1
callbacks:
  explanations: null
task_name: my_study
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("maskdet-*.whl")
    return path


def test_the_wheel_ships_every_config_and_the_console_commands(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("maskdet/conf/") for n in names if n.startswith("maskdet/conf/") and n.endswith(".yaml")}
    in_tree = {str(p.relative_to(REPO / "maskdet" / "conf")) for p in (REPO / "maskdet" / "conf").rglob("*.yaml")}
    assert shipped == in_tree and "train.yaml" in shipped
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for command in ("maskdet-train", "maskdet-evaluate", "maskdet-predict", "maskdet-export", "maskdet-compare"):
        assert f"{command} = " in entry_points


@pytest.mark.slow
def test_an_installed_wheel_trains_a_user_experiment_from_another_directory(wheel, tiny_dataset, cache_dir, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    (work / "my_conf" / "experiment" / "my_exp.yaml").write_text(USER_EXPERIMENT)
    # the wheel's copy comes first on the path; the repository is neither the working directory nor importable
    env = {**os.environ, "PYTHONPATH": str(site), "MASKDET_CACHE_DIR": str(cache_dir)}
    env.pop("MASKDET_ROOT", None)
    where = subprocess.run([sys.executable, "-c", "import maskdet; print(maskdet.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    result = subprocess.run([str(site / "bin" / "maskdet-train"), "--config-dir", "my_conf", "+experiment=my_exp",
                             "data=folder", f"data.root={tiny_dataset}", "trainer.enable_progress_bar=false",
                             "~callbacks.progress_bar"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (work / "outputs" / "my_study" / "runs").iterdir()  # outputs go under the working directory
    assert (run / "metrics.json").is_file() and (run / "predictions.csv").is_file()
    assert "batch_size: 16" in (run / ".hydra" / "config.yaml").read_text()

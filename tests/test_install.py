"""maskdet as an installed framework: what the built wheel ships. Installing it into fresh environments and
training from another directory, with a user's own experiment, is tests/test_extras.py (make test-extras)."""

from __future__ import annotations

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

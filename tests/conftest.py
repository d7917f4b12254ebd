"""Shared fixtures: tiny synthetic datasets generated once per session; nothing is downloaded."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from maskdet.config import register_resolvers
from maskdet.data.synthetic import generate, make_spec

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "maskdet" / "conf"
register_resolvers()

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one compute thread each (and in the CLI processes they start, which inherit
    # the environment). Two threads each would oversubscribe the cores, and OpenMP threads spin while waiting.
    import torch

    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """The files with the most slow tests first (their order within a file kept): ``--dist loadfile`` hands
    whole files to the two workers in collection order, so a long file handed out last would leave the other
    worker idle at the end of the suite."""
    slow = Counter(item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole session, so decoded images are reused across tests as across runs."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """120 face crops (30 per mask class) at 64 px in the COMP6721 study's layout."""
    return generate(make_spec(per_class=30, seed=1, size=64), tmp_path_factory.mktemp("tiny") / "faces")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """400 face crops (100 per class) at 64 px, enough for a few epochs to learn something."""
    return generate(make_spec(per_class=100, seed=2, size=64), tmp_path_factory.mktemp("small") / "faces")


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, cache_dir, tmp_path_factory) -> Path:
    """A finished two-epoch run of the custom CNN on the tiny dataset (best.ckpt, reports, TensorBoard), trained
    once for every test that only reads a run. A test that changes a run works on a copy: the session ends
    with an error if a file in this folder was added, removed or rewritten."""
    from maskdet.train import train

    run = tmp_path_factory.mktemp("tiny_run")
    train(compose_train(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=2",
                         "callbacks.explanations=null"], run, cache_dir))
    before = _listing(run)
    yield run
    assert _listing(run) == before, f"a test changed the shared run {run}: copy it first (shutil.copytree)"


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def compose_train(overrides: list[str], output_dir: Path, cache_dir: Path):
    """Compose conf/train.yaml as the CLI would, with the run folder and cache in the test's tmp dirs."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[
            f"paths.output_dir={output_dir}", f"paths.cache_dir={cache_dir}",
            "~callbacks.progress_bar", "trainer.enable_progress_bar=false", *overrides,
        ])


def cli_env(cache_dir: Path, root: Path) -> dict:
    return {**os.environ, "MASKDET_CACHE_DIR": str(cache_dir), "MASKDET_ROOT": str(root), "PYTHONPATH": str(REPO)}

"""A run folder belongs to its run (maskdet.runfolder): no command writes over another run, a copied run
resumes and tests its own best checkpoint, a failed resume leaves no result, two resumes cannot run at once,
and a run folder holding symlinks is not written into. Real processes, real files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from filelock import FileLock

from tests.conftest import REPO, cli_env, compose_train
from tests.helpers import commands

QUIET = ["trainer.enable_progress_bar=false", "~callbacks.progress_bar"]
SETTINGS = ["data=folder", "data.num_folds=3", "trainer.max_epochs=1", "callbacks.explanations=null"]


def _cli(module, args, env):
    return commands.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, cache_dir, tmp_path_factory) -> Path:
    from maskdet.train import train

    run = tmp_path_factory.mktemp("finished") / "run"
    train(compose_train([*SETTINGS, f"data.root={tiny_dataset}"], run, cache_dir))
    return run


def _copy(run: Path, where: Path) -> Path:
    return Path(shutil.copytree(run, where))


def test_no_command_writes_into_another_run(finished_run, tiny_dataset, cache_dir, tmp_path):
    run = _copy(finished_run, tmp_path / "theirs")
    before = _snapshot(run)
    env = cli_env(cache_dir, tmp_path)
    ckpt = run / "checkpoints" / "best.ckpt"
    for module, args in (("maskdet.evaluate", [f"ckpt_path={ckpt}"]),
                         ("maskdet.export", [f"ckpt_path={ckpt}"]),
                         ("maskdet.train", [*QUIET, *SETTINGS, f"data.root={tiny_dataset}"])):
        done = _cli(module, [*args, f"hydra.run.dir={run}"], env)
        assert done.returncode == 1, (module, done.stdout[-2000:], done.stderr[-2000:])
        assert f"{run} already holds a run (finished)" in done.stderr and "Traceback" not in done.stderr
        assert _snapshot(run) == before, module  # config, reports, log: all as they were


def test_a_copied_run_resumes_and_tests_its_own_best_checkpoint(finished_run, tiny_dataset, cache_dir, tmp_path):
    from maskdet.train import train

    original = tmp_path / "original"
    train(compose_train([*SETTINGS, f"data.root={tiny_dataset}"], original, cache_dir))
    copy = _copy(original, tmp_path / "copy")  # its last.ckpt records original/checkpoints/best.ckpt
    expected = pd.read_csv(copy / "predictions.csv")
    state = torch.load(original / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    state["state_dict"] = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, original / "checkpoints" / "best.ckpt")  # another model now sits at the recorded path
    metrics = train(compose_train([*SETTINGS, f"data.root={tiny_dataset}", f"ckpt_path={copy / 'checkpoints' / 'last.ckpt'}"],
                                  copy, cache_dir))
    assert Path(metrics["best_checkpoint"]) == (copy / "checkpoints" / "best.ckpt").resolve()
    again = pd.read_csv(copy / "predictions.csv")
    pd.testing.assert_frame_equal(again[["label", "prediction"]], expected[["label", "prediction"]])
    assert again["confidence"].to_numpy() == pytest.approx(expected["confidence"].to_numpy(), abs=1e-6)


def test_a_failed_resume_leaves_no_result(finished_run, tiny_dataset, cache_dir, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    (run / "checkpoints" / "best.ckpt").unlink()  # the resume trains nothing, then cannot test its best
    done = _cli("maskdet.train", [*QUIET, *SETTINGS, f"data.root={tiny_dataset}",
                                  f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], cli_env(cache_dir, tmp_path))
    assert done.returncode == 1 and "best checkpoint" in done.stderr, done.stderr[-2000:]
    assert (run / "failed.json").is_file()
    for name in ("metrics.json", "predictions.csv", "bias_report.json", "classification_report.txt", "confusion_matrix.csv"):
        assert not (run / name).exists(), name


def test_two_resumes_of_one_run_cannot_run_at_once(finished_run, tiny_dataset, cache_dir, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    before = _snapshot(run)
    with FileLock(run / ".maskdet.lock"):  # this process is training in the run
        done = _cli("maskdet.train", [*QUIET, *SETTINGS, f"data.root={tiny_dataset}",
                                      f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], cli_env(cache_dir, tmp_path))
    assert done.returncode == 1 and "Another maskdet process is training in" in done.stderr, done.stderr[-2000:]
    after = _snapshot(run)
    after.pop("train.log", None), before.pop("train.log", None)
    assert after == before  # no result removed, nothing rewritten


def test_a_run_folder_with_symlinks_is_not_resumed(finished_run, tiny_dataset, cache_dir, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / "train.log").unlink(missing_ok=True)
    (run / "train.log").symlink_to(victim)
    done = _cli("maskdet.train", [*QUIET, *SETTINGS, f"data.root={tiny_dataset}",
                                  f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], cli_env(cache_dir, tmp_path))
    assert done.returncode == 1 and "symbolic links (train.log ->" in done.stderr, done.stderr[-2000:]
    assert victim.read_text() == "precious\n"


def test_a_failure_after_training_started_is_recorded_and_keeps_its_folder(tmp_path):
    """The failure bookkeeping of training, from plain Python: failed.json is written, the folder is kept, and a
    full disk becomes one paragraph saying what to do; a refusal before training removes the empty folder."""
    import errno
    import json

    from maskdet import runfolder

    run = tmp_path / "run"
    run.mkdir()
    full = OSError(errno.ENOSPC, "No space left on device", str(run / "checkpoints" / "last.ckpt"))
    failure = runfolder.training_failed(run, full)
    assert isinstance(failure, runfolder.TrainingFailed) and "paths.log_dir=<folder>" in str(failure)
    assert "No space left" in json.loads((run / runfolder.FAILED).read_text())["error"]
    runfolder.remove_unstarted_run(run, None, full)
    assert run.is_dir()  # it trained: its traces stay
    other = ValueError("a bug")
    assert runfolder.training_failed(run, other, record=False) is other and other.training_started
    refused = tmp_path / "refused"
    refused.mkdir()
    runfolder.remove_unstarted_run(refused, None, ValueError("refused before training"))
    assert not refused.exists()

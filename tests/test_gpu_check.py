"""benchmarks/gpu_check.py: harmless where there is no GPU; its helpers pick the right files.

The whole check needs a CUDA device (or minutes of CPU with --cpu-rehearsal); of it, only the rehearsal's DDP
step runs here.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_without_cuda_prints_one_line_and_exits_0(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], result.stdout
    assert not out.exists()  # nothing ran, nothing written


def test_checkpoint_prefers_last_then_newest(tmp_path):
    gpu_check = _module()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for age, name in enumerate(["last.ckpt", "best.ckpt", "epoch_001.ckpt"]):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (1_000_000 - age, 1_000_000 - age))  # last.ckpt the newest
    assert gpu_check.find_checkpoint(tmp_path).name == "last.ckpt"
    (folder / "last.ckpt").unlink()
    assert gpu_check.find_checkpoint(tmp_path).name == "best.ckpt"
    os.utime(folder / "epoch_001.ckpt", (2_000_000, 2_000_000))  # now the newest: chosen over best.ckpt
    assert gpu_check.find_checkpoint(tmp_path).name == "epoch_001.ckpt"
    (folder / "best.ckpt").unlink()
    (folder / "epoch_001.ckpt").unlink()
    with pytest.raises(gpu_check.StepFailed, match="no checkpoint"):
        gpu_check.find_checkpoint(tmp_path)


def test_table_shows_failures_with_their_error(tmp_path):
    gpu_check = _module()
    results = [gpu_check.Result("dataset", seconds=12.0, limit_s=120, figures={"images": 8605}),
               gpu_check.Result("ddp", status="FAIL", seconds=3.2, limit_s=120, error="exit status 1: a | b")]
    table = gpu_check.render(results, "header").splitlines()
    assert table[0] == "header"
    assert table[4] == "| dataset | ok | 12.0 | 120 | images: 8605 |"
    assert table[5] == "| ddp | FAIL | 3.2 | 120 | ERROR: exit status 1: a / b |"


@pytest.mark.slow
def test_the_rehearsal_ddp_step_passes_on_two_cpu_processes(tmp_path):
    """The DDP step of ``--cpu-rehearsal``, as the check runs it (trainer=ddp_sim: two gloo processes): it must
    find both processes in what the run wrote, so that a lent GPU is not spent on a false failure."""
    gpu_check = _module()
    check = gpu_check.Check(gpu_check.REHEARSAL, tmp_path / "work", tmp_path, 600, rehearsal=True)
    check.step("ddp", check.ddp)
    (result,) = check.results
    assert result.status == "ok", (result.error, (tmp_path / "gpu_check.log").read_text()[-3000:])
    assert result.figures["ddp processes"] == 2 and result.figures["backend"] == "gloo"


def test_a_study_stopped_at_its_limit_is_partial_not_a_failure(tmp_path):
    """On the H200 the 10-fold study needs about 460 s, more than the check's deadline leaves it: a study killed at
    its limit after finished folds is timed and extrapolated ("partial"); killed before any fold finished, or
    failing for another reason, it is a failure, and the check's exit status counts only failures."""

    gpu_check = _module()
    check = gpu_check.Check(gpu_check.ON_GPU, tmp_path / "work", tmp_path, 600, rehearsal=False)
    study_dir = check.work / "custom_cnn_study"
    outcomes = iter([gpu_check.StepTimedOut("timed out after 74 s"), gpu_check.StepTimedOut("timed out after 5 s"),
                     gpu_check.StepFailed("exit status 1: boom")])

    def run(args, limit, cpu_only=False, peak=False):  # the study's command, as it ends each time
        error = next(outcomes)
        if "74 s" in str(error):  # one fold finished before the limit
            (study_dir / "fold_0").mkdir(parents=True)
            (study_dir / "fold_0" / "metrics.json").write_text(json.dumps(
                {"val": {"val/loss": 0.1}, "test": {"test/loss": 0.1, "test/acc": 0.98}, "epochs_trained": 20,
                 "wall_time_s": 46.0}))
            (study_dir / "fold_0" / "data_report.json").write_text(json.dumps({"counts": {"split": {"train": 5421}}}))
        raise error

    check.run = run
    for _ in range(3):
        check.step("custom_cnn study", lambda limit: check.study("custom_cnn study", limit, 10, 20, "note"))
        if study_dir.exists():
            shutil.rmtree(study_dir)
    assert [r.status for r in check.results] == ["partial", "FAIL", "FAIL"]
    assert check.results[0].figures["all folds (extrapolated) s"] == 460 and check.results[0].figures["folds done"] == "1/10"
    assert check.results[1].figures["folds done"] == "0/10"
    assert len(check.failed()) == 2 and json.loads((tmp_path / "gpu_check.json").read_text())["failed"] == [
        "custom_cnn study", "custom_cnn study"]
    assert "| custom_cnn study | partial |" in (tmp_path / "gpu_check.md").read_text()

"""The console: a few summary lines per run (one per sweep job); the full reports live in the files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env

TINY = ["data=folder", "data.num_folds=3", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar"]


def _run(args, tiny_dataset, cache_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "maskdet.train", *args, *TINY, f"data.root={tiny_dataset}"],
                            cwd=REPO, env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_a_tiny_run_prints_a_short_summary_and_keeps_the_reports_in_its_log(tiny_dataset, cache_dir, tmp_path):
    console = _run([], tiny_dataset, cache_dir, tmp_path)
    lines = [line for line in console.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("run folder: "))
    # before it, only the progress of building the caches, when this test is the first to need them
    assert all(line.startswith(("decoding ", "generating ", "finding ", "  ")) or " % (" in line or "done in" in line
               for line in lines[:start]), console
    lines = lines[start:]
    assert len(lines) <= 6, console
    assert "test acc" in lines[-1]
    for noise in ("litlogger", "litmodels", "Total FLOPs", "does not have many workers", "GPU available", "[HYDRA]"):
        assert noise not in console
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    log = (run / "train.log").read_text()
    assert "data report" in log and "precision" in log and "bias report" in log and "py.warnings" in log
    verbose = _run(["verbose=true", "task_name=verbose"], tiny_dataset, cache_dir, tmp_path)
    assert "precision" in verbose and "skipped files" in verbose and len(verbose.splitlines()) > 40


@pytest.mark.slow
def test_a_sweep_prints_one_line_per_job(tiny_dataset, cache_dir, tmp_path):
    console = _run(["-m", "data.fold=0,1", "callbacks.explanations=null"], tiny_dataset, cache_dir, tmp_path)
    jobs = [line for line in console.splitlines() if line.startswith("job ")]
    assert len(jobs) == 2 and all("test acc" in line for line in jobs), console
    assert "precision" not in console and "Total FLOPs" not in console

"""Experiment tracking: every logger the Lightning + Hydra template offers, read back with its own reader."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, cli_env

TINY = ["data=folder", "data.num_folds=3", "trainer.max_epochs=2", "callbacks.explanations=null",
        "trainer.enable_progress_bar=false", "~callbacks.progress_bar"]


def _train(logger: str, tiny_dataset, cache_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "maskdet.train", *TINY, f"data.root={tiny_dataset}",
                             f"logger={logger}", f"task_name=log_{logger}"], cwd=REPO, env=cli_env(cache_dir, tmp_path),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / f"log_{logger}" / "runs").iterdir()
    return run, yaml.safe_load((run / "metrics.json").read_text())


def _check_csv(run, metrics):
    table = pd.read_csv(run / "csv" / "metrics.csv")
    assert table["val/acc"].dropna().size == 2  # one row per epoch
    assert table["final/test/acc"].dropna().iloc[-1] == pytest.approx(metrics["test"]["test/acc"])
    assert yaml.safe_load((run / "csv" / "hparams.yaml").read_text())["model.architecture"] == "custom_cnn"


def _check_mlflow(tmp_path, logger, metrics):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(f"log_{logger}").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final/test/acc"] == pytest.approx(metrics["test"]["test/acc"])
    assert float(run.data.params["model.optimizer.lr"]) == pytest.approx(1e-3)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] != []


@pytest.mark.slow
def test_csv_logger_holds_epochs_settings_and_final_figures(tiny_dataset, cache_dir, tmp_path):
    _check_csv(*_train("csv", tiny_dataset, cache_dir, tmp_path))


@pytest.mark.slow
def test_mlflow_local_store_is_read_back_with_mlflows_own_client(tiny_dataset, cache_dir, tmp_path):
    pytest.importorskip("mlflow")
    _, metrics = _train("mlflow", tiny_dataset, cache_dir, tmp_path)
    _check_mlflow(tmp_path, "mlflow", metrics)


@pytest.mark.slow
def test_many_loggers_at_once_each_get_the_run(tiny_dataset, cache_dir, tmp_path):
    pytest.importorskip("mlflow")
    run, metrics = _train("many", tiny_dataset, cache_dir, tmp_path)
    _check_csv(run, metrics)
    _check_mlflow(tmp_path, "many", metrics)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_wandb_offline_writes_a_syncable_run_without_network(tiny_dataset, cache_dir, tmp_path):
    pytest.importorskip("wandb")
    run, _ = _train("wandb", tiny_dataset, cache_dir, tmp_path)
    (record,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"final/test/acc" in record.read_bytes() and b"model.optimizer.lr" in record.read_bytes()


def test_no_logger_trains_and_writes_every_report(tiny_dataset, cache_dir, tmp_path):
    run, metrics = _train("null", tiny_dataset, cache_dir, tmp_path)
    assert not (run / "tensorboard").exists() and metrics["test"]
    for name in ("predictions.csv", "bias_report.json", "confusion_matrix.csv", "classification_report.txt",
                 "data_report.json", "splits.csv", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name

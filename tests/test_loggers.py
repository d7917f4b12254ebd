"""Experiment tracking: every logger the Lightning + Hydra template offers, read back with its own reader."""

from __future__ import annotations

import sys

import lightning as L
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, cli_env
from tests.helpers import commands

TINY = ["data=folder", "data.num_folds=3", "trainer.max_epochs=2", "callbacks.explanations=null",
        "trainer.enable_progress_bar=false", "~callbacks.progress_bar"]


def _train(logger: str, tiny_dataset, cache_dir, tmp_path):
    result = commands.run([sys.executable, "-m", "maskdet.train", *TINY, f"data.root={tiny_dataset}",
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
def test_csv_logger_holds_epochs_settings_and_final_metrics(tiny_dataset, cache_dir, tmp_path):
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


# ------------------------------------------------------------------------------------ TensorBoard's layout
def _events(board):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(board), size_guidance={"scalars": 0, "tensors": 0}).Reload()


def _hparams(events) -> dict:
    """The run's hparams plugin data by kind: experiment (the declared config), start and end of its session."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    data = {tag.rsplit("/", 1)[-1]: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}
    return {"experiment": data["experiment"].experiment if "experiment" in data else None,
            "start": data["session_start_info"].session_start_info if "session_start_info" in data else None,
            "end": data["session_end_info"].session_end_info if "session_end_info" in data else None}


def served_by_tensorboard(logdir) -> tuple[dict, list]:
    """What TensorBoard's own HParams backend serves the browser for ``logdir``: the experiment (columns in
    the order the HParams tab lists them) and the session groups (one per run, with its status)."""
    import json

    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    apps = hparams_plugin.HParamsPlugin(base_plugin.TBContext(logdir=str(logdir), data_provider=provider)).get_plugin_apps()

    def post(route, body):
        response = werkzeug_test.Client(apps[route], wrappers.Response).post(route, data=json.dumps(body),
                                                                            content_type="application/json")
        return json.loads(response.get_data())

    experiment = post("/experiment", {"experimentName": ""})
    groups = post("/session_groups", {"allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                          "STATUS_RUNNING"], "colParams": [], "startIndex": 0,
                                      "sliceSize": 1000})["sessionGroups"]
    return experiment, groups


@pytest.mark.slow
def test_tensorboard_opens_on_curves_lists_set_settings_and_main_metrics_first(tiny_dataset, cache_dir, tmp_path):
    """Scalars: sections numbered so the curves sort (and open) first, names unchanged everywhere else; single
    points at the last training step; HParams: the settings the command set and model/lr/batch/epochs/fold
    marked as differing (listed and shown first), the main metrics first, the session a success."""
    from tensorboard.plugins.hparams import api_pb2

    from maskdet.loggers import LEADING, MAIN_METRICS, tb_tag

    result = commands.run([sys.executable, "-m", "maskdet.train", *TINY, f"data.root={tiny_dataset}",
                             "logger=[tensorboard,csv]", "task_name=log_tb", "model.optimizer.weight_decay=0.001"],
                            cwd=REPO, env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "log_tb" / "runs").iterdir()
    metrics = yaml.safe_load((run / "metrics.json").read_text())
    events = _events(run / "tensorboard")
    scalars = events.Tags()["scalars"]

    # sections: TensorBoard sorts groups (a tag's first segment) with digits first and opens the first two
    groups = sorted({tag.split("/", 1)[0] for kind in ("scalars", "images", "histograms") for tag in events.Tags()[kind]})
    assert groups[:4] == ["1_train", "2_val", "3_test", "4_final"], groups
    assert {"1_train/loss", "2_val/acc", "2_val/acc_best", "3_test/acc", "4_final/test/acc"} <= set(scalars)
    assert not [t for t in scalars if t.split("/", 1)[0] in ("train", "val", "test", "final")]
    assert "val/acc" in metrics["val"] and "test/acc" in metrics["test"]  # metrics.json keeps its names
    _check_csv(run, metrics)  # and so does the CSV

    # steps: one point per epoch; test, final and bias figures at the last epoch's step, never past it
    last = max(e.step for e in events.Scalars("2_val/acc"))
    assert len(events.Scalars("2_val/acc")) == 2 and max(e.step for e in events.Scalars("1_train/loss")) == last
    singles = [t for t in scalars if t.startswith(("3_test/", "4_final/", "bias/"))]
    assert singles and {e.step for t in singles for e in events.Scalars(t)} == {last}
    assert max(e.step for t in scalars for e in events.Scalars(t)) == last
    assert events.Scalars("4_final/test/acc")[-1].value == pytest.approx(metrics["test"]["test/acc"])

    hparams = _hparams(events)
    infos = list(hparams["experiment"].hparam_infos)
    leading = [h.name for h in infos if h.differs]
    assert [h.name for h in infos[:len(leading)]] == leading  # listed first
    assert "model.optimizer.weight_decay" in leading  # set on the command line
    assert set(LEADING) <= set(leading)  # model, learning rate, batch size, epochs, fold
    assert "data.age_bins" not in leading and len(infos) > 20  # every setting is still there, after them
    tags = [m.name.tag for m in hparams["experiment"].metric_infos]
    assert tags[:3] == [tb_tag(m) for m in MAIN_METRICS[:3]] and set(tags) <= set(scalars)
    assert hparams["start"].hparams["model.optimizer.lr"].number_value == pytest.approx(1e-3)
    assert hparams["end"].status == api_pb2.STATUS_SUCCESS

    served, sessions = served_by_tensorboard(run / "tensorboard")
    assert [h["name"] for h in served["hparamInfos"][:len(leading)]] == sorted(leading)  # TensorBoard: by name
    assert [m.get("displayName") for m in served["metricInfos"][:3]] == ["test/acc", "test/f1", "val/acc_best"]
    assert [s["status"] for g in sessions for s in g["sessions"]] == ["STATUS_SUCCESS"]


class FailAtTest(L.Callback):
    """Fails a run after training, when it starts testing (its curves are in TensorBoard by then)."""

    def on_test_start(self, trainer, pl_module):
        raise RuntimeError("the test images went missing")


def test_a_run_that_fails_after_training_is_marked_failed_in_tensorboard(tiny_dataset, cache_dir, tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    from maskdet.loggers import FAILED_SUFFIX, FAILED_TAG, TensorBoardLogger
    from maskdet.train import train
    from tests.conftest import compose_train

    cfg = compose_train(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=1",
                         "callbacks.explanations=null", "+callbacks.fail._target_=tests.test_loggers.FailAtTest"],
                        tmp_path, cache_dir)
    with pytest.raises(RuntimeError, match="went missing"):
        train(cfg)
    assert (tmp_path / "failed.json").is_file()
    events = _events(tmp_path / "tensorboard")
    assert "2_val/acc" in events.Tags()["scalars"]  # its curves are there...
    hparams = _hparams(events)
    assert hparams["end"].status == api_pb2.STATUS_FAILURE  # ...and the HParams tab says it failed
    assert hparams["start"].hparams["model.architecture"].string_value == "custom_cnn"
    (text,) = events.Tensors(f"{FAILED_TAG}/text_summary")
    assert "the test images went missing" in text.tensor_proto.string_val[0].decode()
    _, sessions = served_by_tensorboard(tmp_path / "tensorboard")
    assert [s["status"] for g in sessions for s in g["sessions"]] == ["STATUS_FAILURE"]

    # a resume of the run (purge_step) removes the marker: the run is running again
    (marker,) = (tmp_path / "tensorboard").glob(f"*{FAILED_SUFFIX}")
    TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard", version="", purge_step=1)
    assert not marker.exists() and list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

"""End-to-end training runs on tiny synthetic data: outputs, learning, experiments, bad input."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from maskdet.errors import ConfigError, DataError
from maskdet.train import train
from tests.conftest import CONF, REPO, cli_env, compose_train
from tests.helpers import commands

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_all_five_experiments_exist():
    assert {"custom_cnn", "resnet18_frozen", "resnet18_finetune", "mobilenetv2_frozen", "mobilenetv2_finetune"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    assert cfg.task_name == experiment
    assert cfg.data._target_ == "maskdet.data.DataSettings" and cfg.model._target_ == "maskdet.models.MaskClassifier"
    if cfg.model.architecture == "custom_cnn":
        assert cfg.data.image_size == 32 and cfg.model.architecture == "custom_cnn" and cfg.data.augment is None
    else:
        assert cfg.data.image_size == 224 and cfg.model.mean is None  # the weights' own (backbones.weights_normalisation)
        assert cfg.data.augment.rotation == 15 and cfg.data.augment.brightness == 0.2
        assert cfg.model.freeze == ("backbone" if "frozen" in experiment else "none")


def test_default_config_is_the_comp6721_protocol():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train")
    assert cfg.model.architecture == "custom_cnn" and cfg.model.optimizer.lr == 0.001
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.data.test_size, cfg.data.num_folds, cfg.data.fold,
            cfg.data.seed) == (32, 32, 0.3, 10, 0, 0)
    assert list(cfg.data.source.per_class) == [2160, 2103, 2162, 2180]
    assert cfg.trainer.max_epochs == 20 and cfg.trainer.accelerator == "auto"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, cache_dir, tmp_path):
    # the embedded dataset every experiment is written for (leakage_study sets its shared_faces), at tiny_dataset's size
    cfg = compose_train([f"+experiment={experiment}", "model.weights=null", "trainer.fast_dev_run=true",
                         "data.source.per_class=30", "data.source.seed=1", "data.source.size=64", "data.num_folds=3",
                         "data.batch_size=8", "data.eval_batch_size=16", "callbacks.explanations.per_class=1",
                         "callbacks.explanations.gallery_size=4"], tmp_path, cache_dir)
    metrics = train(cfg)
    assert set(metrics["test"]) == {"test/loss", "test/acc", "test/f1"}
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 16  # fast_dev_run tests one batch


def _run_outputs_are_complete(run: Path, n_test: int, classes: list[str]):
    for name in ("metrics.json", "predictions.csv", "classification_report.txt", "confusion_matrix.png",
                 "confusion_matrix.csv", "data_report.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == n_test
    assert list(predictions.columns[:4]) == ["path", "label", "prediction", "confidence"]
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    assert abs(probs.sum(1) - 1).max() < 1e-5
    assert {"age", "gender", "race", "age_group"} <= set(predictions.columns)
    assert (predictions["prediction"] == pd.Series(classes)[probs.argmax(1)].to_numpy()).all()
    metrics = json.loads((run / "metrics.json").read_text())
    accuracy = (predictions["label"] == predictions["prediction"]).mean()
    assert metrics["test"]["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert Path(metrics["best_checkpoint"]).name == "best.ckpt"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == metrics["epochs_trained"] - 1, "last.ckpt must be the end of the latest epoch"
    best = torch.load(metrics["best_checkpoint"], weights_only=True)
    assert best["epoch"] == metrics["best_epoch"] and "optimizer_states" not in best  # weights only
    report = (run / "classification_report.txt").read_text()
    assert all(c in report for c in classes) and f"{accuracy:.4f}" in report
    matrix = pd.read_csv(run / "confusion_matrix.csv", index_col=0)
    assert list(matrix.index) == classes and matrix.to_numpy().sum() == n_test
    data_report = json.loads((run / "data_report.json").read_text())
    assert data_report["counts"]["split"]["test"] == n_test and data_report["classes"] == classes
    return metrics


@pytest.mark.slow
def test_few_epochs_learn_well_above_chance_and_write_every_output(small_dataset, cache_dir, tmp_path):
    cfg = compose_train(["data=folder", f"data.root={small_dataset}", "trainer.max_epochs=8", "data.num_folds=5"],
                        tmp_path, cache_dir)
    metrics = train(cfg)
    classes = ["without_mask", "with_surgical_mask", "with_cloth_mask", "with_ffp2_mask"]
    _run_outputs_are_complete(tmp_path, n_test=120, classes=classes)
    assert metrics["test"]["test/acc"] > 0.5, metrics  # chance is 0.25
    assert metrics["val"]["val/acc_best"] >= metrics["val"]["val/acc"] - 1e-6


@pytest.mark.slow
def test_cli_trains_an_unseen_class_folder_layout(tmp_path, cache_dir):
    from tests.test_sources import make_folder_dataset

    root = make_folder_dataset(tmp_path / "faces", classes=("hat", "helmet", "hood"), per_class=25)
    result = commands.run(
        [sys.executable, "-m", "maskdet.train", "data=folder", f"data.root={root}", "trainer.max_epochs=2",
         "data.num_folds=3", "task_name=unseen"],
        cwd=REPO, env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "unseen" / "runs").iterdir()
    assert (run / ".hydra" / "config.yaml").is_file()
    metrics = _run_outputs_are_complete(run, n_test=23, classes=["hat", "helmet", "hood"])  # ceil(0.3 * 75)
    assert metrics["num_classes"] == 3


def _cli_error(tmp_path, cache_dir, *overrides) -> str:
    result = commands.run([sys.executable, "-m", "maskdet.train", *overrides], cwd=REPO,
                            env=cli_env(cache_dir, tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.slow
def test_cli_bad_input_ends_with_one_clear_paragraph(tmp_path, cache_dir):
    message = _cli_error(tmp_path, cache_dir, "data=folder", f"data.root={tmp_path / 'missing'}")
    assert f"data.root={tmp_path / 'missing'} does not exist" in message
    message = _cli_error(tmp_path, cache_dir, "data.imag_size=64")
    assert message.strip() == "maskdet: Unknown config key data.imag_size. Did you mean data.image_size or data.batch_size?"


def test_misspelt_added_key_names_the_closest_valid_one(tmp_path, cache_dir):
    cfg = compose_train(["+data.imag_size=64"], tmp_path, cache_dir)
    with pytest.raises(ConfigError, match=r"Unknown config key data.imag_size.*Did you mean data.image_size"):
        train(cfg)


def test_empty_class_folder_and_single_class_stop_the_run(tmp_path, cache_dir):
    from tests.test_sources import make_folder_dataset

    root = make_folder_dataset(tmp_path / "faces", classes=("a", "b"), per_class=20)
    (root / "c").mkdir()
    cfg = compose_train(["data=folder", f"data.root={root}"], tmp_path / "run", cache_dir)
    with pytest.raises(DataError, match="holds no image files"):
        train(cfg)
    (root / "c").rmdir()
    for f in (root / "b").iterdir():
        f.write_bytes(b"")  # every image of class b is unreadable: one class is left
    with pytest.raises(DataError, match=r"Only one class \(a\) has usable images"):
        train(cfg)


@pytest.mark.slow
def test_head_on_cached_features_matches_training_through_the_frozen_backbone(tiny_dataset, cache_dir, tmp_path):
    common = ["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "model=resnet18", "model.weights=null",
              "model.freeze=backbone", "data.image_size=64", "trainer.max_epochs=3", "data.batch_size=16",
              "~logger", "trainer.deterministic=true"]
    cached = train(compose_train([*common, "data.feature_cache=true"], tmp_path / "cached", cache_dir))
    through = train(compose_train([*common, "data.feature_cache=false"], tmp_path / "through", cache_dir))
    assert cached["test"]["test/acc"] == pytest.approx(through["test"]["test/acc"], abs=1e-6)
    assert cached["test"]["test/loss"] == pytest.approx(through["test"]["test/loss"], rel=1e-4)
    import torch

    heads = [torch.load(m["best_checkpoint"], weights_only=True)["state_dict"]["net.fc.weight"] for m in (cached, through)]
    assert torch.allclose(heads[0], heads[1], atol=1e-5)
    assert list((cache_dir / "decoded").glob("64px-*/features-*.npy"))

"""Runs that never lie: exact resume after a real kill, refused resumes, divergence, strict JSON, full disks.

Every test here drives the real entry points (subprocesses where a process must die or exit) on the tiny
embedded dataset; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, cli_env, compose_train
from tests.helpers import commands

DETERMINISTIC = ["data=folder", "data.num_folds=3", "trainer.deterministic=true", "seed=5",
                 "callbacks.explanations=null", "+data.augment={_target_: maskdet.data.augment.BatchAugment}"]


QUIET = ["trainer.enable_progress_bar=false", "~callbacks.progress_bar"]


def _cli(args, env, **kwargs):
    return commands.run([sys.executable, "-m", "maskdet.train", *QUIET, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


def _strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _val_points(run: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from maskdet.loggers import tb_tag

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()  # honours purge_step, as TensorBoard itself does
    return [(e.step, e.value) for e in events.Scalars(tb_tag("val/acc"))]


@pytest.mark.slow
def test_a_run_killed_between_epochs_resumes_to_exactly_the_uninterrupted_result(tiny_dataset, cache_dir, tmp_path):
    args = [*DETERMINISTIC, f"data.root={tiny_dataset}", "trainer.max_epochs=6"]
    env = cli_env(cache_dir, tmp_path)
    whole = _cli([*args, "task_name=whole"], env)
    assert whole.returncode == 0, whole.stderr[-3000:]

    process = subprocess.Popen([sys.executable, "-m", "maskdet.train", *QUIET, *args, "task_name=killed"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "outputs" / "killed" / "runs"
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:  # kill as soon as epoch 2 is checkpointed
        last = list(runs.glob("*/checkpoints/last.ckpt"))
        if last and torch.load(last[0], weights_only=True)["epoch"] >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    (run,) = runs.iterdir()
    assert not (run / "metrics.json").exists()

    resumed = _cli([*args, "task_name=killed", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], env,
                   fresh=True)  # a new interpreter (hash seed, imports) against the forked whole run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == [run.name], "a resume must not leave another run folder"
    (reference,) = (tmp_path / "outputs" / "whole" / "runs").iterdir()
    assert (run / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()
    got, expected = _strict_json(run / "metrics.json"), _strict_json(reference / "metrics.json")
    for key in ("val", "test", "bias", "best_epoch", "epochs_trained"):
        assert got[key] == expected[key], key
    assert _val_points(run) == _val_points(reference) and len(_val_points(run)) == 6  # one point per epoch
    log = (run / "train.log").read_text()
    assert "data report" in log and "resuming from" in log and "metrics:" in log  # one log, appended


def _trained_run(tiny_dataset, cache_dir, out: Path, *overrides) -> Path:
    from maskdet.train import train

    train(compose_train([*DETERMINISTIC, f"data.root={tiny_dataset}", "trainer.max_epochs=2", *overrides], out, cache_dir))
    return out


def test_a_resume_with_other_data_settings_is_refused_naming_each_key(tiny_dataset, cache_dir, tmp_path):
    run = _trained_run(tiny_dataset, cache_dir, tmp_path / "run")
    report_before = (run / "data_report.json").read_bytes()
    config_before = (run / ".hydra" / "config.yaml").read_bytes()
    env = cli_env(cache_dir, tmp_path)
    result = _cli([*DETERMINISTIC, f"data.root={tiny_dataset}", "trainer.max_epochs=3", "data.seed=1",
                   "data.test_size=0.5", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], env)
    assert result.returncode == 1
    assert "Refusing to resume" in result.stderr and "data.seed: run had 0, this command 1" in result.stderr
    assert "data.test_size: run had 0.3, this command 0.5" in result.stderr and "Traceback" not in result.stderr
    assert (run / "data_report.json").read_bytes() == report_before
    assert (run / ".hydra" / "config.yaml").read_bytes() == config_before
    assert not (tmp_path / "outputs").exists(), "a refused resume must not create a run folder"


def test_best_checkpoint_is_refused_for_resuming_and_a_finished_run_resumes_to_the_same_metrics(
        tiny_dataset, cache_dir, tmp_path):
    from maskdet.errors import ConfigError
    from maskdet.train import train

    run = _trained_run(tiny_dataset, cache_dir, tmp_path / "run")
    first = json.loads((run / "metrics.json").read_text())
    overrides = [*DETERMINISTIC, f"data.root={tiny_dataset}", "trainer.max_epochs=2"]
    with pytest.raises(ConfigError, match="holds no training state"):
        train(compose_train([*overrides, f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}"], run, cache_dir))
    last_written = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    again = train(compose_train([*overrides, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run, cache_dir))
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == last_written, "no epoch may be trained again"
    assert again.get("resumed_from_epoch") == 1
    assert again["val"] == first["val"] and again["val"]["val/acc_best"] >= again["val"]["val/acc"]
    assert again["test"] == first["test"] and again["epochs_trained"] == 2


def test_a_run_that_fails_before_training_leaves_no_run_folder(tmp_path, cache_dir):
    result = _cli(["data=folder", f"data.root={tmp_path / 'nowhere'}"], cli_env(cache_dir, tmp_path))
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    runs = tmp_path / "outputs" / "train" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_exit_on_error_tidies_first_then_exits_1_for_a_user_error_and_keeps_a_bug_s_traceback(capsys):
    from maskdet.errors import DataError, exit_on_error

    seen = []

    def fail(err):
        raise err

    with pytest.raises(SystemExit) as done:
        exit_on_error(fail, DataError("data.root=/x does not exist."), on_error=seen.append)
    assert done.value.code == 1 and capsys.readouterr().err == "\nmaskdet: data.root=/x does not exist.\n"
    with pytest.raises(ZeroDivisionError):  # a bug: re-raised as it is, so its traceback is shown
        exit_on_error(fail, ZeroDivisionError("division by zero"), on_error=seen.append)
    assert [type(e).__name__ for e in seen] == ["DataError", "ZeroDivisionError"]
    assert exit_on_error(max, 2, 3, on_error=seen.append) == 3 and len(seen) == 2


@pytest.mark.slow
@pytest.mark.parametrize("lr", ["1e30", "1e6"])
def test_a_diverging_run_fails_loudly_and_writes_no_result(lr, tiny_dataset, cache_dir, tmp_path):
    result = _cli(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=3",
                   f"model.optimizer.lr={lr}", "callbacks.explanations=null"], cli_env(cache_dir, tmp_path))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "diverged" in result.stderr and "model.optimizer.lr" in result.stderr and "Traceback" not in result.stderr
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    failed = _strict_json(run / "failed.json")
    assert "DivergedError" in failed["error"] and "epoch" in failed["error"]
    for name in ("metrics.json", "predictions.csv", "bias_report.json", "classification_report.txt"):
        assert not (run / name).exists(), name


@pytest.fixture(scope="module")
def trained(tiny_dataset, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    from maskdet.train import train

    train(compose_train(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=1"],
                        out, cache_dir))
    return out


def test_every_json_a_run_writes_is_strict_json(trained):
    files = sorted(trained.rglob("*.json"))
    assert {"metrics.json", "bias_report.json", "data_report.json"} <= {p.name for p in files}
    for path in files:
        _strict_json(path)  # bare NaN / Infinity tokens would raise


def _nan_checkpoint(trained: Path, folder: Path) -> Path:
    """A copy of the run with every weight NaN, as a diverged run would have left it (its temperature, fitted
    after training, stays as written: a NaN temperature is refused when the file is read, test_calibration.py)."""
    shutil.copytree(trained, folder)
    path = folder / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() and k != "temperature" else v
                                for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, path)
    return path


def test_no_prediction_is_derived_from_nan_probabilities(trained, tiny_dataset, cache_dir, tmp_path):
    ckpt = _nan_checkpoint(trained, tmp_path / "nan_run")
    env = cli_env(cache_dir, tmp_path)
    images = sorted(Path(tiny_dataset).rglob("*.png"))[:3] or sorted(Path(tiny_dataset).rglob("*.jpg"))[:3]
    for folder in ("crops",):
        (tmp_path / folder).mkdir()
        for image in images:
            shutil.copy(image, tmp_path / folder / image.name)
    runs = {}
    for entry, extra in (("predict", [f"input={tmp_path / 'crops'}"]), ("evaluate", []), ("export", []), ("explain", [])):
        result = commands.run([sys.executable, "-m", f"maskdet.{entry}", f"ckpt_path={ckpt}", *extra], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=300)
        runs[entry] = result
        assert result.returncode == 1, (entry, result.stderr[-2000:])
        assert "NaN or infinite" in result.stderr and "Traceback" not in result.stderr, (entry, result.stderr[-2000:])
    made = {p.name for p in (tmp_path / "outputs").rglob("*") if p.is_file()}
    assert not made & {"predictions.csv", "model.onnx", "model_card.md", "model.json", "bias_report.json"}


def test_export_parity_fails_on_non_finite_output(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from maskdet.checkpoints import load_classifier
    from maskdet.export import check_parity, export_onnx
    from maskdet.finite import DivergedError

    model = load_classifier(_nan_checkpoint(trained, tmp_path / "nan_run"))
    path = tmp_path / "model.onnx"
    export_onnx(model, path, model.hparams.image_size)
    with pytest.raises(DivergedError, match="NaN or infinite"):
        check_parity(model, path, torch.rand(4, 3, model.hparams.image_size, model.hparams.image_size), 1e-4)


def test_checkpoint_disk_use_is_not_doubled(trained):
    last, best = trained / "checkpoints" / "last.ckpt", trained / "checkpoints" / "best.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert best.stat().st_size < 0.5 * last.stat().st_size  # weights only: no optimiser moments


def _small_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_fails_loudly_and_leaves_no_truncated_checkpoint(
        tiny_dataset, cache_dir, tmp_path):
    disk = tmp_path / "disk"
    _small_tmpfs(disk, "30m")  # room for the data report, not for a 57 MB custom-CNN checkpoint
    try:
        env = {**cli_env(cache_dir, tmp_path), "MASKDET_ROOT": str(disk)}
        result = _cli(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=1",
                       "callbacks.explanations=null"], env)
        assert result.returncode == 1 and "No space left" in result.stderr and "Traceback" not in result.stderr
        (run,) = (disk / "outputs" / "train" / "runs").iterdir()
        checkpoints = list((run / "checkpoints").glob("*")) if (run / "checkpoints").exists() else []
        for path in checkpoints:  # whatever is there under a final name loads completely
            torch.load(path, weights_only=True)
        assert not (run / "metrics.json").exists() and "marked failed" in result.stderr
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_tensorboard_hparams_tab_holds_the_settings_with_the_final_metrics(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(trained / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["model.architecture"].string_value == "custom_cnn"
    assert hparams["model.optimizer.lr"].number_value == pytest.approx(1e-3) and "data.fold" in hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    from maskdet.loggers import tb_tag  # TensorBoard's tags: sections numbered (tests/test_loggers.py)

    assert {tb_tag("final/test/acc"), tb_tag("final/test/f1"), tb_tag("final/val/acc_best")} <= metric_tags
    metrics = json.loads((trained / "metrics.json").read_text())
    assert events.Scalars(tb_tag("final/test/acc"))[-1].value == pytest.approx(metrics["test"]["test/acc"])


def test_a_fixed_split_source_without_test_images_is_refused_before_training_unless_test_false(
        tiny_dataset, cache_dir, tmp_path):
    rows = []
    for class_dir in sorted(p for p in Path(tiny_dataset).iterdir() if p.is_dir()):
        for i, image in enumerate(sorted(class_dir.iterdir())):
            rows.append(f"{image.relative_to(tiny_dataset)},{class_dir.name},{'train' if i < 20 else 'val'}")
    (tmp_path / "manifest.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    args = ["data=manifest", f"data.root={tiny_dataset}", f"data.source.manifest={tmp_path / 'manifest.csv'}",
            "trainer.max_epochs=1", "callbacks.explanations=null"]
    env = cli_env(cache_dir, tmp_path)
    refused = _cli(args, env)
    assert refused.returncode == 1 and "test split is empty" in refused.stderr and "test=false" in refused.stderr
    assert not (tmp_path / "outputs" / "train" / "runs").exists() or not any((tmp_path / "outputs" / "train" / "runs").iterdir())
    untested = _cli([*args, "test=false"], env)
    assert untested.returncode == 0, untested.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["test"] == {} and not (run / "predictions.csv").exists()


def test_predict_with_no_readable_input_fails_instead_of_writing_an_empty_result(trained, tmp_path, cache_dir):
    (tmp_path / "crops").mkdir()
    (tmp_path / "crops" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    result = commands.run([sys.executable, "-m", "maskdet.predict", f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}",
                             f"input={tmp_path / 'crops'}"], cwd=REPO, env=cli_env(cache_dir, tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "None of the files" in result.stderr and "broken.jpg" in result.stdout + result.stderr
    (skipped,) = (tmp_path / "outputs").rglob("skipped.csv")
    assert "broken.jpg" in skipped.read_text()


def test_balancing_that_cannot_be_honoured_is_refused_not_ignored(tiny_dataset, cache_dir, tmp_path):
    from maskdet.errors import ConfigError
    from maskdet.train import train

    cfg = compose_train(["data=folder", f"data.root={tiny_dataset}", "data.num_folds=3", "trainer.max_epochs=1",
                         "data.balance_by=[gender]", "data.decoded_cache=false", "~logger"], tmp_path, cache_dir)
    with pytest.raises(ConfigError, match="data.balance_by=.*cannot be honoured with data.decoded_cache=false"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()

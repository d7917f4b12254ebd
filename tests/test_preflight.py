"""Settings that would fail only after training (or with a traceback) are refused first, with a message.

Every refusal here happens before any data work: no dataset is generated, no cache written, nothing
put in a run folder. The CLI tests run the real entry points and check the exit status, the message
and that no traceback reaches the user.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, REPO, cli_env, compose_train

from maskdet.checkpoints import load_classifier
from maskdet.errors import ConfigError
from maskdet.models import MaskClassifier
from maskdet.preflight import check_config, writable_problem
from maskdet.train import main as train_main
from maskdet.train import train
from tests.helpers import commands

CLASSES = ["with_mask", "without_mask", "mask_weared_incorrect", "mask_chin"]


def run_cli(module: str, args: list[str], root: Path, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = cli_env(cache or root / "cache", root)
    env.pop("HYDRA_FULL_ERROR", None)
    return commands.run([sys.executable, "-m", f"maskdet.{module}", *args], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)


def assert_refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def save_checkpoint(path: Path, architecture: str = "custom_cnn", classes_in_weights: int = 4, **extra) -> Path:
    """A checkpoint laid out as Lightning writes one (state_dict + hyper_parameters) from a real model;
    ``classes_in_weights`` != 4 gives weights that do not fit the 4-class model its hparams describe."""
    model = MaskClassifier("custom_cnn", num_classes=classes_in_weights, image_size=32)
    hparams = {**dict(model.hparams), "architecture": architecture, "num_classes": 4, "class_names": CLASSES}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
                **extra}, path)
    return path


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder that cannot be written even by root: a read-only tmpfs when running as root, else chmod."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("mount") is None:
        pytest.skip("running as root without `mount`: cannot make a read-only folder")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and mounting a read-only tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# ------------------------------------------------------------------ train(cfg): refused before data work
REFUSED = [
    (["+bias.bogus=1"], "Unknown config key bias.bogus: maskdet.evaluation.options.BiasOptions accepts attributes, "
                        "min_group_size, metrics, n_bootstrap, seed"),
    (["bias.n_bootstrap=0"], "bias.n_bootstrap=0 must be a whole number of at least 1"),
    (["bias.attributes=[colour]"], "colour is not an attribute the bias audit knows: use any of gender, race, "
                                   "age_group, gender_x_race"),
    (["bias.attributes=gender"], "must be a list of attributes, e.g. bias.attributes=[gender]"),
    (["bias.min_group_size=abc"], "bias.min_group_size='abc' is not accepted"),
    (["data.balance_by=[colour]"], "data.balance_by: colour is not a demographic column"),
    (["data.batch_size=0"], "data.batch_size=0 must be a whole number of at least 1"),
    (["data.cap_per_class=0"], "use data.cap_per_class=null for no cap"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not accepted: it must be a whole number of "
                                 "at least -1"),
    (["trainer.precision=31"], "trainer.precision=31 is not accepted"),
    (["data=default"], "data=coco|folder|manifest|roboflow|synthetic|voc|yolo"),
    (["+data.subset.gender=femal"], "data.subset.gender: Unknown gender value 'femal'"),
    (["+data.subset.colour=red"], "data.subset.colour: no such column"),
    (["data.age_bins=[20,10]"], "data.age_bins=[20, 10] must be at least two increasing ages"),
    (["data.test_size=1.5"], "data.test_size=1.5 must be a fraction between 0 and 1"),
    (["data.label_map=binar"], "data.label_map='binar' is unknown"),
    (["+model.dropout=0.5"], "Unknown config key model.dropout"),
    # numeric settings, as Lightning and torch read them (-1 is "no limit" where Lightning says so)
    (["model.optimizer.lr=-1"], "model.optimizer.lr=-1 is not accepted: it must be a finite number above 0"),
    (["model.optimizer.lr=nan"], "model.optimizer.lr=nan is not accepted"),
    (["model.optimizer.lr=inf"], "model.optimizer.lr=inf is not accepted"),
    (["model.optimizer.weight_decay=-0.1"], "model.optimizer.weight_decay=-0.1 is not accepted: it must be a "
                                            "finite number of at least 0"),
    (["trainer.max_epochs=-2"], "trainer.max_epochs=-2 is not accepted: it must be a whole number of at least -1 "
                                "(-1: no epoch limit, as in Lightning)"),
    (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5 is not accepted"),
    (["+trainer.min_epochs=-1"], "trainer.min_epochs=-1 is not accepted: it must be a whole number of at least 0"),
    (["+trainer.max_steps=-2"], "trainer.max_steps=-2 is not accepted: it must be a whole number of at least -1"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5 is not accepted: it must be a whole "
                                          "number of batches of at least 0, a fraction of them from 0.0 to 1.0"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is not accepted"),
    (["trainer.gradient_clip_val=-1.0"], "trainer.gradient_clip_val=-1.0 is not accepted"),
    (["trainer.devices=0"], "trainer.devices=0 is not accepted"),
    (["callbacks.divergence.max_loss=-5"], "callbacks.divergence.max_loss=-5 is not accepted: it must be a number "
                                           "above 0 (the divergence limit on a batch's training loss)"),
    (["callbacks.explanations.per_class=0"], "callbacks.explanations.per_class=0 is not accepted"),
    (["callbacks.explanations.low_confidence=2"], "callbacks.explanations.low_confidence=2 is not accepted: it must "
                                                  "be a finite number of at least 0 and at most 1"),
    (["+callbacks.early_stopping={_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val/loss, "
      "patience: -1}"], "callbacks.early_stopping.patience=-1 is not accepted: it must be a whole number of at least 0"),
    (["model.scheduler={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 0}"],
     "model.scheduler.step_size=0 is not accepted"),
    (["model.std=[0.2,0.2,0]"], "model.std=[0.2, 0.2, 0] is not accepted: it must be three finite numbers above 0"),
    (["model.mean=[0.5,0.5]"], "model.mean=[0.5, 0.5] is not accepted: it must be three finite numbers"),
    (["seed=-1"], "seed=-1 is not accepted: it must be a whole number of at least 0 and at most 4294967295"),
    (["data.source.per_class=1.5"], "data.source.per_class=1.5 is not accepted"),
    (["data.source.size=abc"], "data.source.size='abc' is not accepted"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[o[0] for o, _ in REFUSED])
def test_train_refuses_before_any_data_work(tmp_path, overrides, message):
    output_dir, cache = tmp_path / "run", tmp_path / "cache"
    tiny = [] if any(o.startswith("data=") for o in overrides) else ["data.source.per_class=10"]
    cfg = compose_train([*tiny, *overrides], output_dir, cache)
    with pytest.raises(ConfigError) as refused:
        train(cfg)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)  # one paragraph
    assert not cache.exists(), "a refused run generated data or wrote the cache"
    assert not output_dir.exists(), "a refused run wrote into its run folder"


def test_accepted_settings_pass(tmp_path):
    """The defaults, a numeric folder name, fractions of batches and the null cap are all fine."""
    for overrides in ([], ["data=folder", "data.root=2024"], ["trainer.limit_train_batches=0.5"],
                      ["data.cap_per_class=null", "data.balance_by=gender", "bias.attributes=[race]"],
                      ["~logger"], ["trainer.max_epochs=-1", "+trainer.max_steps=-1", "trainer.max_epochs=null"],
                      ["callbacks.divergence.max_loss=inf", "trainer.limit_val_batches=3", "trainer.devices=-1"],
                      ["model.optimizer.lr=1e-5", "model.optimizer.weight_decay=0", "trainer.fast_dev_run=true"]):
        check_config(compose_train(overrides, tmp_path / "run", tmp_path / "cache"), "train")
    assert not (tmp_path / "cache").exists()


def test_unreadable_or_foreign_resume_checkpoint_leaves_the_run_untouched(tmp_path):
    run = tmp_path / "old_run"
    (run / ".hydra").mkdir(parents=True)
    report = run / "data_report.json"
    report.write_text('{"original": true}')
    cache = tmp_path / "cache"
    cases = {
        "garbage.ckpt": ("not a readable PyTorch checkpoint", lambda p: p.write_bytes(os.urandom(2048))),
        "foreign.ckpt": ("is not a maskdet checkpoint", lambda p: torch.save({"state_dict": {}, "epoch": 3}, p)),
        "resnet.ckpt": ("was trained with architecture 'resnet18' (the config says model.architecture='custom_cnn')",
                        lambda p: save_checkpoint(p, "resnet18", optimizer_states=[], loops={})),
    }
    for name, (message, make) in cases.items():
        ckpt = run / "checkpoints" / name
        ckpt.parent.mkdir(exist_ok=True)
        make(ckpt)
        cfg = compose_train([f"ckpt_path={ckpt}", "data.source.per_class=10"], tmp_path / "new_run", cache)
        with pytest.raises(ConfigError, match="ckpt_path=") as refused:
            train(cfg)
        assert message in str(refused.value), name
        assert report.read_text() == '{"original": true}'
        assert not cache.exists() and not (tmp_path / "new_run").exists()


def test_weights_that_do_not_fit_their_architecture_name_the_file(tmp_path):
    ckpt = save_checkpoint(tmp_path / "edited.ckpt", classes_in_weights=2)
    with pytest.raises(ConfigError) as refused:
        load_classifier(ckpt)
    assert f"ckpt_path={ckpt} contradicts itself: class_names has 4 names" in str(refused.value)
    assert "the network has 2 outputs" in str(refused.value)
    checkpoint = torch.load(save_checkpoint(tmp_path / "conv.ckpt"), weights_only=True)
    checkpoint["state_dict"]["net.conv_layer.0.weight"] = torch.zeros(5, 3, 3, 3)  # a backbone layer changed
    torch.save(checkpoint, tmp_path / "conv.ckpt")
    with pytest.raises(ConfigError) as refused:
        load_classifier(tmp_path / "conv.ckpt")
    assert "its weights do not fit the model" in str(refused.value) and "size mismatch" in str(refused.value)


def test_writable_problem_on_real_folders(tmp_path, read_only_dir):
    assert writable_problem(tmp_path / "not" / "yet" / "there") is None
    (tmp_path / "a_file").write_text("x")
    assert "is a file, not a folder" in writable_problem(tmp_path / "a_file" / "outputs")
    assert "cannot be written" in writable_problem(read_only_dir / "outputs")


# ------------------------------------------------------------------------------- the real entry points
@pytest.mark.slow
@pytest.mark.parametrize(("module", "phrases"), [
    ("evaluate", ["maskdet.evaluate needs a checkpoint: pass ckpt_path="]),
    ("explain", ["maskdet.explain needs a checkpoint: pass ckpt_path="]),
    ("export", ["maskdet.export needs a checkpoint: pass ckpt_path="]),
    ("predict", ["maskdet.predict needs a checkpoint", "maskdet.predict needs images to classify: pass input="]),
])
def test_entry_point_without_its_required_argument(tmp_path, module, phrases):
    assert_refused(run_cli(module, [], tmp_path), *phrases)


@pytest.mark.slow
@pytest.mark.parametrize(("module", "args", "message"), [
    ("evaluate", ["ckpt_path=x.ckpt", "data.batchsize=64"],
     "maskdet: Unknown config key data.batchsize. Did you mean data.batch_size or data.eval_batch_size?"),
    ("train", ["data.synthetic.per_class=30"], "maskdet: data.synthetic.per_class is now data.source.per_class "
     "(data.synthetic.* moved to data.source.*): pass data.source.per_class=30 instead."),
    ("train", ["model=resnet19"], "maskdet: There is no model option 'resnet19'; did you mean model=resnet18? "
     "Options: custom_cnn, mobilenet_v2, resnet18, timm"),
    ("train", ["-m", "+experiment=resnet18_frozn"], "did you mean +experiment=resnet18_frozen"),
])
def test_a_mistake_gets_one_maskdet_message_with_a_hint(tmp_path, module, args, message):
    """One paragraph, maskdet's, with the closest valid names: no Hydra block, no '+' advice for a key that
    exists under another name, nothing created."""
    result = run_cli(module, args, tmp_path)
    assert_refused(result, message)
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one message, one line
    assert "To append to your config" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_cli_refusals_before_any_data_work(tmp_path):
    ckpt = save_checkpoint(tmp_path / "edited.ckpt", classes_in_weights=2)
    assert_refused(run_cli("evaluate", [f"ckpt_path={ckpt}"], tmp_path),
                   f"ckpt_path={ckpt} contradicts itself", "the network has 2 outputs")
    assert_refused(run_cli("evaluate", [f"ckpt_path={ckpt}", "data=default", "bias.n_bootstrap=0"], tmp_path),
                   "data=default is the base shared by the data configs", "data=coco|folder|manifest|roboflow|synthetic|voc|yolo")
    assert_refused(run_cli("explain", [f"ckpt_path={ckpt}", "+explain.colour=1"], tmp_path),
                   "Unknown config key explain.colour")
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_read_only_run_and_cache_folders(tmp_path, read_only_dir):
    ckpt = save_checkpoint(tmp_path / "model.ckpt")
    assert_refused(run_cli("evaluate", [f"ckpt_path={ckpt}", f"paths.log_dir={read_only_dir / 'outputs'}"], tmp_path),
                   f"Cannot create the run folder {read_only_dir / 'outputs'}", "paths.log_dir=")
    assert_refused(run_cli("evaluate", [f"ckpt_path={ckpt}"], tmp_path, cache=read_only_dir / "cache"),
                   f"Cannot write the cache folder {read_only_dir / 'cache'}", "paths.cache_dir=")


@pytest.mark.slow
def test_train_cli_refuses_bad_bias_setting(tmp_path):
    assert_refused(run_cli("train", ["bias.attributes=[colour]", "data.source.per_class=10"], tmp_path),
                   "colour is not an attribute the bias audit knows")
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_train_cli_key_hint_and_no_logger(tmp_path):
    assert getattr(train_main, "maskdet_entry_point", False), "train.main must use maskdet.cli.entry_point"
    result = run_cli("train", ["data.batchsize=64"], tmp_path)
    assert_refused(result, "Did you mean data.batch_size")
    result = run_cli("train", ["logger=null", "data.source.per_class=10", "data.num_folds=2", "trainer.max_epochs=1",
                               "~callbacks.progress_bar", "~callbacks.explanations", "trainer.enable_progress_bar=false",
                               "bias.n_bootstrap=10"], tmp_path)
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert (run / "metrics.json").is_file() and not (run / "tensorboard").exists()


def test_key_hints_know_a_user_s_config_dir_and_every_entry_point(tmp_path):
    """A group option from --config-dir gets the same "Did you mean" as a shipped one (the composition that
    finds the hint searches the user's folder too), and maskdet.data uses the shared entry point."""
    from maskdet.cli import key_hint
    from maskdet.data.__main__ import main as data_main

    (tmp_path / "my_conf" / "data").mkdir(parents=True)
    (tmp_path / "my_conf" / "data" / "mine.yaml").write_text((CONF / "data" / "folder.yaml").read_text())
    argv = ["--config-dir", str(tmp_path / "my_conf"), "data=mine", "data.batch_sise=4"]
    assert key_hint(CONF, "train", argv) == "Did you mean data.batch_size or data.eval_batch_size?"
    assert key_hint(CONF, "train", argv[2:]) is None  # without the folder, data=mine is not found: no guess
    assert getattr(data_main, "maskdet_entry_point", False), "maskdet.data must use maskdet.cli.entry_point"


# ------------------------------------------------------------------ checkpoints checked whole
def tampered(source: Path, path: Path, **hparams) -> Path:
    """A copy of a real checkpoint with its hyper-parameters changed, saved as Lightning saves one."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    torch.save(checkpoint, path)
    return path


CONTRADICTIONS = {  # hyper-parameters written over a trained 4-class checkpoint -> what the refusal says
    "three_names": ({"class_names": ["a", "b", "c"], "num_classes": 3},
                    "class_names has 3 names ['a', 'b', 'c'] but the network has 4 outputs"),
    "same_names": ({"class_names": ["mask"] * 4}, "names ['mask'] more than once"),
    "one_name": ({"class_names": ["mask"], "num_classes": 1}, "names 1 class; a classifier needs at least two"),
    "not_strings": ({"class_names": [1, 2, 3, 4]}, "must be a list of non-empty strings"),
    "num_classes": ({"num_classes": 3}, "the network has 4 outputs and num_classes=3"),
    "image_size": ({"image_size": 0}, "image_size=0 must be a whole number of pixels"),
    "mean": ({"mean": [0.5, 0.5]}, "mean=[0.5, 0.5] must be three finite numbers"),
    "std": ({"std": [0.2, 0.2, 0.0]}, "std=[0.2, 0.2, 0.0] must be three finite numbers above 0"),
}


def test_a_trained_checkpoint_names_its_head_and_passes(tiny_run):
    from maskdet.preflight import checkpoint_problem, output_count, read_checkpoint

    checkpoint = read_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    assert checkpoint["maskdet"]["head"] == "fc_layer.6" and output_count(checkpoint) == 4
    del checkpoint["maskdet"]  # a file from before heads were recorded: the network's last layer
    assert output_count(checkpoint) == 4 and checkpoint_problem(checkpoint) is None


@pytest.mark.parametrize("architecture", ["resnet18", "squeezenet1_1", "mobilenet_v2"])
def test_output_count_finds_every_family_s_head(architecture):
    from maskdet.preflight import checkpoint_problem, output_count

    model = MaskClassifier(architecture, num_classes=3, class_names=["a", "b", "c"], image_size=64)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "maskdet": {"head": model.head_name}}
    assert output_count(checkpoint) == 3 and checkpoint_problem(checkpoint) is None
    assert output_count({"state_dict": checkpoint["state_dict"]}) == 3  # without the recorded head too
    checkpoint["hyper_parameters"]["class_names"] = ["a", "b"]
    assert "the network has 3 outputs" in checkpoint_problem(checkpoint)


@pytest.mark.parametrize("case", CONTRADICTIONS)
def test_contradicting_checkpoints_are_refused_whole(tiny_run, tmp_path, case):
    changes, message = CONTRADICTIONS[case]
    ckpt = tampered(tiny_run / "checkpoints" / "best.ckpt", tmp_path / f"{case}.ckpt", **changes)
    with pytest.raises(ConfigError) as refused:
        load_classifier(ckpt)
    assert f"ckpt_path={ckpt} contradicts itself: " in str(refused.value) and message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.slow
def test_commands_refuse_contradicting_checkpoints_before_any_work(tiny_run, tiny_dataset, tmp_path):
    """The real commands, on tampered copies of a trained checkpoint: refused with the file and the reason,
    before any data is read (no cache) or any prediction is written."""
    best = tiny_run / "checkpoints" / "best.ckpt"
    image = next(p for p in tiny_dataset.rglob("*") if p.is_file())
    for case, command in (("three_names", "predict"), ("same_names", "evaluate"), ("one_name", "predict"),
                          ("std", "evaluate")):
        changes, message = CONTRADICTIONS[case]
        ckpt = tampered(best, tmp_path / f"{case}.ckpt", **changes)
        root = tmp_path / case
        root.mkdir()
        args = [f"ckpt_path={ckpt}"] + ([f"input={image}"] if command == "predict" else [])
        assert_refused(run_cli(command, args, root), f"ckpt_path={ckpt} contradicts itself", message)
        assert not (root / "cache").exists()
        assert not list(root.rglob("predictions.csv")) and not list(root.rglob("metrics.json"))


# ------------------------------------------------------------------ numeric settings, real commands
@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), [
    ("model.optimizer.lr=-1", "model.optimizer.lr=-1 is not accepted: it must be a finite number above 0"),
    ("trainer.max_epochs=-2", "trainer.max_epochs=-2 is not accepted: it must be a whole number of at least -1 "
                              "(-1: no epoch limit, as in Lightning)"),
    ("callbacks.divergence.max_loss=-5", "callbacks.divergence.max_loss=-5 is not accepted: it must be a number "
                                         "above 0"),
], ids=["lr", "max_epochs", "max_loss"])
def test_train_cli_refuses_numbers_before_generating_data(tmp_path, override, message):
    result = run_cli("train", [override, "data.source.per_class=10"], tmp_path)
    assert_refused(result, message)
    assert not (tmp_path / "cache").exists(), "the dataset was generated or a cache written"
    assert not list((tmp_path / "outputs").rglob("*.ckpt")) and not list((tmp_path / "outputs").rglob("data_report.json"))


@pytest.mark.slow
def test_predict_cli_refuses_a_frame_step_that_is_not_a_whole_number(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    for value, shown in (("abc", "'abc'"), ("1.5", "1.5"), ("0", "0")):
        result = run_cli("predict", [f"ckpt_path={ckpt}", f"input={tmp_path}", "detect=true", f"every_n_frames={value}"],
                         tmp_path)
        assert_refused(result, f"every_n_frames={shown} is not accepted: it must be a whole number of at least 1")
    assert not list(tmp_path.rglob("predictions.csv"))


def test_other_commands_check_their_numbers(tmp_path):
    from hydra import compose, initialize_config_dir

    ckpt = save_checkpoint(tmp_path / "model.ckpt")
    cases = [("export", ["max_abs_diff=-1"], "max_abs_diff=-1 is not accepted"),
             ("predict", ["input=x", "detector.margin=-0.5"], "detector.margin=-0.5 is not accepted"),
             ("predict", ["input=x", "detector=onnx", "detector.score_threshold=1.5"],
              "detector.score_threshold=1.5 is not accepted: it must be a finite number of at least 0 and at most 1"),
             ("explain", ["explain.gallery_size=0"], "explain.gallery_size=0 is not accepted"),
             ("evaluate", ["trainer.limit_test_batches=-1"], "trainer.limit_test_batches=-1 is not accepted"),
             ("evaluate", ["bias.seed=-3"], "bias.seed=-3 is not accepted")]
    for task, overrides, message in cases:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=task, overrides=[f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'out'}",
                                                       f"paths.cache_dir={tmp_path / 'cache'}", *overrides])
        with pytest.raises(ConfigError, match="is not accepted") as refused:
            check_config(cfg, task)
        assert message in str(refused.value), task


@pytest.mark.slow
def test_a_folder_as_checkpoint_and_an_empty_input_are_called_what_they_are(tmp_path):
    run = tmp_path / "some_run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "best.ckpt")
    assert_refused(run_cli("evaluate", [f"ckpt_path={run}"], tmp_path),
                   f"ckpt_path={run} is a folder, not a checkpoint file",
                   f"pass ckpt_path={run / 'checkpoints' / 'best.ckpt'}")
    (tmp_path / "empty").mkdir()
    assert_refused(run_cli("predict", [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"input={tmp_path / 'empty'}"],
                           tmp_path), f"No images in input={tmp_path / 'empty'}")
    assert list(tmp_path.glob("outputs/*/runs/*")) == [], "a refused command leaves no run folder"


@pytest.mark.parametrize(("setting", "message"), [
    ({"primary_metric": "macro_f1"}, "bias.primary_metric='macro_f1': the gap test compares proportions"),
    ({"alpha": 1.5}, "bias.alpha=1.5 must be a number between 0 and 1"),
    ({"correction": "bonferroni"}, "bias.correction='bonferroni' is not accepted"),
])
def test_bias_family_settings_are_refused_before_training(setting, message):
    from omegaconf import OmegaConf

    from maskdet.errors import ConfigError
    from maskdet.preflight import check_bias_options

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_bias_options(OmegaConf.create(setting))
    check_bias_options(OmegaConf.create({"primary_metric": "recall_with_mask", "alpha": 0.01, "correction": "fdr_bh"}))


HEAVY = {"lightning", "torch", "torchmetrics", "matplotlib", "scipy", "pandas", "sklearn"}


@pytest.mark.parametrize("command, args, answer", [
    ("train", ["data.nonexistent=1"], "Unknown config key data.nonexistent"),
    ("train", ["data.synthetic.per_class=3"], "data.synthetic.per_class is now data.source.per_class"),
    ("train", ["--help"], "Powered by Hydra"), ("train", ["--cfg", "job"], "batch_size: 32"),
    ("explain", ["explain.per_clas=3"], "Did you mean explain.per_class"),
    # wrong values: each settings object checks itself before the heavy imports
    ("train", ["data.batch_size=0"], "data.batch_size=0 must be a whole number of at least 1"),
    ("train", ["bias.alpha=2"], "bias.alpha=2 must be a number between 0 and 1"),
    ("train", ["comparison.n_boot=3"], "bootstrap resamples 3"),
    ("train", ["data=folder"], "data.root is not set"),
    ("train", ["data.balance_by=[gender]", "data.decoded_cache=false"], "cannot be honoured with data.decoded_cache=false"),
    ("train", ["trainer.max_epochs=-2"], "trainer.max_epochs=-2 is not accepted"),
])
def test_refusals_help_and_cfg_answer_without_importing_lightning_or_torch(command, args, answer, tmp_path):
    """The command line is composed and checked before PyTorch Lightning, PyTorch or pandas load (import checks,
    not timings: Python's -X importtime lists every module a process imported); a refused run leaves no folder."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"maskdet.{command}", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and not imported & HEAVY, sorted(imported & HEAVY)
    assert (result.returncode == 0) == (args[0] in ("--help", "--cfg")), result.stderr[-2000:]
    assert answer in result.stdout + result.stderr
    runs = tmp_path / "outputs" / command / "runs"
    assert not runs.is_dir() or not any(runs.iterdir()), "a refused run left its folder behind"
